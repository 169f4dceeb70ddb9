//! Retention of the history (`events`) and of `log_lines`, both partitioned by UTC day.
//!
//! Old data goes by dropping whole day partitions — instant, no vacuum debt — and only what no
//! whole partition covers is deleted row by row. One pass at a time: every pass holds the session
//! advisory lock [`LOCK_KEY`]; the periodic pass ([`enforce`]) skips a round when another replica
//! holds it, [`delete_events_older_than`] waits for it. A tenant's own deletion
//! ([`delete_tenant_events_older_than`]) deletes rows only and needs no lock.

use crate::error::{Error, ErrorKind};
use chrono::{DateTime, Duration as Days, NaiveDate, TimeZone, Utc};
use runcast_contract::EntityId;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

/// Name hashed into the advisory lock key that serializes retention passes.
pub const LOCK_KEY: &str = "runcast_retention";

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
    /// Every partition: an explicit "older than".
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

/// Deletes every event (of every tenant) that occurred before `cutoff`: the day partitions wholly
/// before it are dropped, the rest of the older rows deleted. Waits for a running retention pass
/// to finish. Log lines keep their own retention.
#[tracing::instrument(skip(pool), err)]
pub async fn delete_events_older_than(pool: &PgPool, cutoff: DateTime<Utc>) -> Result<Deleted, Error> {
    let mut conn = locked(pool, true)
        .await?
        .ok_or_else(|| Error::new(ErrorKind::Internal, "advisory lock not granted while waiting for it"))?;
    let outcome = delete_older_than(&mut conn, "events", cutoff, RowScope::Everywhere).await;
    unlock(conn).await;
    outcome
}

/// One periodic pass: drops the partitions of `events` older than `history_cutoff` and of
/// `log_lines` older than `logs_cutoff`. `None` when another replica is running a pass right now.
#[tracing::instrument(skip(pool), err)]
pub async fn enforce(
    pool: &PgPool,
    history_cutoff: DateTime<Utc>,
    logs_cutoff: DateTime<Utc>,
) -> Result<Option<(Deleted, Deleted)>, Error> {
    let Some(mut conn) = locked(pool, false).await? else {
        return Ok(None);
    };
    let outcome = async {
        let events = delete_older_than(&mut conn, "events", history_cutoff, RowScope::DefaultPartition).await?;
        let logs = delete_older_than(&mut conn, "log_lines", logs_cutoff, RowScope::DefaultPartition).await?;
        Ok((events, logs))
    }
    .await;
    unlock(conn).await;
    outcome.map(Some)
}

/// Deletes the tenant's history that occurred before `cutoff`, and nothing of other tenants
/// (dropping whole day partitions is for [`enforce`] alone). In batches, each its own
/// statement, so a large delete never holds its locks for long. Returns the rows deleted.
pub async fn delete_tenant_events_older_than(
    pool: &PgPool,
    tenant: &EntityId,
    cutoff: DateTime<Utc>,
) -> Result<u64, Error> {
    const BATCH: i64 = 5000;
    let mut deleted = 0;
    loop {
        let batch = sqlx::query!(
            "DELETE FROM events WHERE (stream, stream_offset, occurred_at, event_id) IN (
                 SELECT stream, stream_offset, occurred_at, event_id FROM events
                 WHERE tenant_id = $1 AND occurred_at < $2
                 LIMIT $3)",
            tenant.as_str(),
            cutoff,
            BATCH,
        )
        .execute(pool)
        .await
        .map_err(|err| Error::database("cannot delete events", err))?
        .rows_affected();
        deleted += batch;
        if batch < BATCH as u64 {
            return Ok(deleted);
        }
    }
}

/// A connection holding the retention lock (session level, so each statement of the pass
/// commits on its own and the `DROP`s hold the table lock only briefly). `wait`: block for the
/// lock, or give up at once.
async fn locked(pool: &PgPool, wait: bool) -> Result<Option<PoolConnection<Postgres>>, Error> {
    let mut conn = pool.acquire().await.map_err(|err| Error::database("cannot get a connection for retention", err))?;
    let granted = if wait {
        sqlx::query!("SELECT pg_advisory_lock(hashtext($1))", LOCK_KEY).fetch_one(&mut *conn).await.map(|_| true)
    } else {
        sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock(hashtext($1)) AS "granted!""#, LOCK_KEY)
            .fetch_one(&mut *conn)
            .await
    }
    .map_err(|err| Error::database("cannot take the retention lock", err))?;
    Ok(granted.then_some(conn))
}

async fn unlock(mut conn: PoolConnection<Postgres>) {
    let released = sqlx::query!("SELECT pg_advisory_unlock(hashtext($1))", LOCK_KEY).fetch_one(&mut *conn).await;
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
    let partitions = sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!" FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::text::regclass ORDER BY 1"#,
        table,
    )
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
        // DDL on a table named at run time: no macro can check it. The name matched
        // `{table}_pYYYYMMDD` above: nothing in it needs quoting.
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS \"{partition}\"")))
            .execute(&mut **conn)
            .await
            .map_err(|err| Error::database(format!("cannot drop partition {partition}"), err))?;
        tracing::info!(partition = %partition, "dropped expired partition");
        deleted.partitions_dropped.push(partition);
    }
    // The table (or its default partition) is named at run time, from the constants above.
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
    Ok(deleted)
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
