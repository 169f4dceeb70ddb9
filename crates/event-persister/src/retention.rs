//! Retention of the history (`events`) and of `log_lines`, both partitioned by UTC day: the
//! periodic pass of every replica, and what it removed as metrics. The passes themselves (day
//! partitions dropped, the rest deleted row by row, one replica at a time under an advisory lock)
//! are the store's (`runcast_store::retention`).

use crate::consumer::retry_backoff;
use crate::error::Error;
use chrono::{DateTime, Utc};
use runcast_runtime::ops::ReadyFlag;
pub use runcast_store::retention::{Deleted, LOCK_KEY};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub history: Duration,
    pub logs: Duration,
}

/// Deletes every event that occurred before `cutoff` (every tenant's): the day partitions wholly
/// before it are dropped, the rest of the older rows deleted. Waits for a running pass to finish.
pub async fn delete_events_older_than(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Deleted, Error> {
    let deleted = runcast_store::retention::delete_events_older_than(pool, cutoff).await?;
    count("events", &deleted);
    Ok(deleted)
}

/// One periodic pass: drops the partitions of `events` and `log_lines` older than the policy.
/// `None` when another replica is running a pass right now.
pub async fn enforce(
    pool: &PgPool,
    policy: RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<Option<(Deleted, Deleted)>, Error> {
    let history_cutoff = now - to_chrono(policy.history);
    let logs_cutoff = now - to_chrono(policy.logs);
    let outcome = runcast_store::retention::enforce(pool, history_cutoff, logs_cutoff).await?;
    if let Some((events, logs)) = &outcome {
        count("events", events);
        count("log_lines", logs);
    }
    Ok(outcome)
}

fn count(table: &'static str, deleted: &Deleted) {
    metrics::counter!("runcast_persister_retention_partitions_dropped_total", "table" => table)
        .increment(deleted.partitions_dropped.len() as u64);
    metrics::counter!("runcast_persister_retention_rows_deleted_total", "table" => table)
        .increment(deleted.rows_deleted);
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Runs [`enforce`] every `interval` (first once the schema is ready) until `shutdown`.
pub async fn run(
    pool: PgPool,
    policy: RetentionPolicy,
    interval: Duration,
    schema_ready: ReadyFlag,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = schema_ready.wait() => {}
    }
    let mut backoff = retry_backoff(interval);
    loop {
        let wait = match enforce(&pool, policy, Utc::now()).await {
            Ok(Some((events, logs))) => {
                if !events.partitions_dropped.is_empty() || !logs.partitions_dropped.is_empty() {
                    tracing::info!(?events, ?logs, "retention pass done");
                }
                backoff.reset();
                interval
            }
            Ok(None) => interval, // another replica's turn
            Err(err) => {
                tracing::warn!(cause = %err, "retention pass failed; retrying");
                backoff.next()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
