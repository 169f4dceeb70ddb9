//! Retention of the history (`events`) and of `log_lines`, both partitioned by UTC day.
//!
//! Old data goes by dropping whole day partitions — instant, no vacuum debt — and only what no
//! whole partition covers is deleted row by row. One replica at a time: every pass holds the
//! session advisory lock [`LOCK_KEY`]; the periodic pass skips a round when another replica holds
//! it, `DELETE /events` waits for it.
//!
//! The api's `DELETE /events?older_than=` calls [`delete_events_older_than`].

use crate::consumer::Backoff;
use crate::error::{Error, ErrorKind};
use chrono::{DateTime, Duration as Days, NaiveDate, TimeZone, Utc};
use runcast_runtime::ops::ReadyFlag;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Name hashed into the advisory lock key that serializes retention passes.
pub const LOCK_KEY: &str = "runcast_retention";

/// How long data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub history: Duration,
    pub logs: Duration,
}

/// What a pass removed from one table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Partitions dropped, e.g. `events_p20261001`.
    pub partitions_dropped: Vec<String>,
    /// Rows deleted one by one (outside the dropped partitions).
    pub rows_deleted: u64,
}

/// Where rows older than the cutoff are deleted one by one after the partitions went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowScope {
    /// Only the default partition (events from outside the prepared days): the periodic pass,
    /// which otherwise waits for a day to pass out of retention as a whole.
    DefaultPartition,
    /// Every partition: an explicit "older than" from the api.
    Everywhere,
}

/// The day of a partition named `{table}_pYYYYMMDD`.
pub fn partition_day(table: &str, partition: &str) -> Option<NaiveDate> {
    let suffix = partition.strip_prefix(table)?.strip_prefix("_p")?;
    if suffix.len() != 8 || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    NaiveDate::parse_from_str(suffix, "%Y%m%d").ok()
}

/// Whether the partition of `day` (covering `[day, day + 1)` UTC) lies wholly before `cutoff`.
pub fn partition_expired(day: NaiveDate, cutoff: DateTime<Utc>) -> bool {
    let end = day + Days::days(1);
    Utc.from_utc_datetime(&end.and_hms_opt(0, 0, 0).unwrap_or_default()) <= cutoff
}

/// Deletes every event that occurred before `cutoff`: the day partitions wholly before it are
/// dropped, the rest of the older rows deleted. Waits for a running retention pass to finish.
/// This is what `DELETE /events?older_than=` does; log lines keep their own retention.
#[tracing::instrument(skip(pool), err)]
pub async fn delete_events_older_than(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Deleted, Error> {
    let mut conn = locked(pool, true)
        .await?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "advisory lock not granted while waiting for it"))?;
    let outcome = delete_older_than(&mut conn, "events", cutoff, RowScope::Everywhere).await;
    unlock(conn).await;
    outcome
}

/// One periodic pass: drops the partitions of `events` and `log_lines` older than the policy.
/// `None` when another replica is running a pass right now.
#[tracing::instrument(skip(pool), err)]
pub async fn enforce(
    pool: &PgPool,
    policy: RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<Option<(Deleted, Deleted)>, Error> {
    let Some(mut conn) = locked(pool, false).await? else {
        return Ok(None);
    };
    let outcome = async {
        let history_cutoff = now - to_chrono(policy.history);
        let logs_cutoff = now - to_chrono(policy.logs);
        let events = delete_older_than(&mut conn, "events", history_cutoff, RowScope::DefaultPartition).await?;
        let logs = delete_older_than(&mut conn, "log_lines", logs_cutoff, RowScope::DefaultPartition).await?;
        Ok((events, logs))
    }
    .await;
    unlock(conn).await;
    outcome.map(Some)
}

fn to_chrono(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// A connection holding the retention lock (session level, so each statement of the pass
/// commits on its own and the `DROP`s hold the table lock only briefly). `wait`: block for the
/// lock, or give up at once.
async fn locked(pool: &PgPool, wait: bool) -> Result<Option<PoolConnection<Postgres>>, Error> {
    let mut conn = pool.acquire().await.map_err(|err| Error::database("cannot get a connection for retention", err))?;
    let granted: bool = if wait {
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))").bind(LOCK_KEY).execute(&mut *conn).await.map(|_| true)
    } else {
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))").bind(LOCK_KEY).fetch_one(&mut *conn).await
    }
    .map_err(|err| Error::database("cannot take the retention lock", err))?;
    Ok(granted.then_some(conn))
}

async fn unlock(mut conn: PoolConnection<Postgres>) {
    let released = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(LOCK_KEY).execute(&mut *conn).await;
    if released.is_err() {
        // Closing the session is what releases the lock for sure.
        drop(conn.detach());
    }
}

async fn delete_older_than(
    conn: &mut PoolConnection<Postgres>,
    table: &'static str,
    cutoff: DateTime<Utc>,
    scope: RowScope,
) -> Result<Deleted, Error> {
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(&mut **conn)
    .await
    .map_err(|err| Error::database(format!("cannot list the partitions of {table}"), err))?;
    let mut deleted = Deleted::default();
    for partition in partitions {
        let Some(day) = partition_day(table, &partition) else {
            continue; // the default partition, or one someone else made
        };
        if !partition_expired(day, cutoff) {
            continue;
        }
        // The name matched `{table}_pYYYYMMDD` above: nothing in it needs quoting.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS \"{partition}\"")))
            .execute(&mut **conn)
            .await
            .map_err(|err| Error::database(format!("cannot drop partition {partition}"), err))?;
        tracing::info!(partition = %partition, "dropped expired partition");
        deleted.partitions_dropped.push(partition);
    }
    let target = match scope {
        RowScope::DefaultPartition => format!("{table}_default"),
        RowScope::Everywhere => table.to_owned(),
    };
    let result = sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {target} WHERE occurred_at < $1")))
        .bind(cutoff)
        .execute(&mut **conn)
        .await
        .map_err(|err| Error::database(format!("cannot delete old rows of {table}"), err))?;
    deleted.rows_deleted = result.rows_affected();
    metrics::counter!("runcast_persister_retention_partitions_dropped_total", "table" => table)
        .increment(deleted.partitions_dropped.len() as u64);
    metrics::counter!("runcast_persister_retention_rows_deleted_total", "table" => table)
        .increment(deleted.rows_deleted);
    Ok(deleted)
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
    let mut backoff = Backoff::new(interval);
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
                backoff.advance()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_map_to_their_days() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 2).expect("date");
        assert_eq!(partition_day("events", "events_p20261102"), Some(day));
        assert_eq!(partition_day("events", "events_default"), None);
        assert_eq!(partition_day("events", "log_lines_p20261102"), None);
        assert_eq!(partition_day("events", "events_p2026110"), None);
        assert_eq!(partition_day("log_lines", "log_lines_p20261399"), None);
    }

    #[test]
    fn a_partition_expires_once_its_whole_day_is_before_the_cutoff() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 2).expect("date");
        let at = |d: u32, h: u32| Utc.with_ymd_and_hms(2026, 11, d, h, 0, 0).single().expect("t");
        assert!(!partition_expired(day, at(2, 23)));
        assert!(partition_expired(day, at(3, 0)));
        assert!(partition_expired(day, at(5, 12)));
    }
}
