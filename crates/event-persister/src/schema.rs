//! Keeping the database schema up to date: the store's migrations (`runcast_store::schema`,
//! embedded from `crates/runcast-store/migrations/`) and the daily partitions of `events` and
//! `log_lines`, created ahead of time so writes never wait on DDL.

use crate::Config;
use runcast_runtime::Error;
use runcast_runtime::backoff::Backoff;
use runcast_runtime::ops::ReadyFlag;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use runcast_store::schema::{MIGRATOR, PARTITIONED_TABLES, ensure_partitions, migrate};

/// How often partitions are topped up while running.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(3600);

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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
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
                backoff.reset();
                UPKEEP_INTERVAL
            }
            Err(err) => {
                let wait = backoff.next();
                tracing::warn!(cause = %err, retry_in = ?wait, "cannot bring the database schema up to date yet");
                wait
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
