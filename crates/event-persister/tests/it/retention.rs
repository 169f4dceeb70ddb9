//! Retention drops the day partitions past the retention and keeps today's; the api's
//! `DELETE /events?older_than=` drops what it can and deletes the remainder row by row.

use crate::support::{self, World};
use chrono::{Duration, Utc};
use event_persister::retention::{self, RetentionPolicy};
use runcast_contract::StreamKind;

async fn partitions(world: &World, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(&world.pool)
    .await
    .expect("partitions")
}

fn partition(table: &str, days_ago: i64) -> String {
    format!("{table}_p{}", (Utc::now() - Duration::days(days_ago)).format("%Y%m%d"))
}

#[tokio::test]
async fn retention_drops_expired_partitions_keeps_today_and_deletes_the_rest_on_demand() {
    let world = World::start().await;
    // The persister's own pass must not race the test's: give it a year.
    let _persister =
        world.persister(&[("RUNCAST_HISTORY_RETENTION", "365d"), ("RUNCAST_LOGS_RETENTION", "365d")]).await;
    for (table, days) in [("events", 40), ("log_lines", 10)] {
        sqlx::query("SELECT runcast_ensure_daily_partitions($1::regclass, (now() AT TIME ZONE 'UTC')::date - $2, 1)")
            .bind(table)
            .bind(days)
            .execute(&world.pool)
            .await
            .expect("old partition");
    }

    // 40-day-old events, an older load of today, fresh events; 10-day-old and fresh logs. The
    // load is an hour old, or just after midnight UTC when the test runs in the first hour of a
    // day (an hour earlier would be yesterday's partition, which the deletion below drops whole).
    // Its events are `load_at` + 1..=5 s; the fresh ones, `now`, must stay after the cutoff.
    let mut now = Utc::now().timestamp();
    if now.rem_euclid(86_400) < 20 {
        tokio::time::sleep(std::time::Duration::from_secs(20)).await;
        now = Utc::now().timestamp();
    }
    let load_at = (now - 3600).max(now - now.rem_euclid(86_400) + 1);
    let cutoff = chrono::DateTime::from_timestamp(load_at + 10, 0).expect("a valid time");
    let subject = |id: &str| world.subject(StreamKind::Executions, "acme", id);
    let mut events: Vec<_> = support::execution_events("acme", "old", 3, now - 40 * 86_400)
        .into_iter()
        .map(|e| (subject("old"), e))
        .collect();
    events.extend(support::load_at(&world, 10, 5, load_at));
    events.extend(support::execution_events("acme", "fresh", 2, now).into_iter().map(|e| (subject("fresh"), e)));
    let mut old_log = support::log_event("acme", "old", 1, 3);
    old_log.occurred_at = Some(prost_types::Timestamp { seconds: now - 10 * 86_400, nanos: 0 });
    let logs = world.subject(StreamKind::Logs, "acme", "old");
    events.push((logs.clone(), old_log));
    events.push((logs, support::log_event("acme", "old", 4, 2)));
    world.publish(events).await;
    world.wait_for_history(3 + 50 + 2 + 2).await;
    let old_rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {}", partition("events", 40))))
            .fetch_one(&world.pool)
            .await
            .expect("old rows");
    assert_eq!(old_rows, 3, "the old events landed in their day's partition");

    // The periodic pass: whole partitions past the defaults (30 days history, 7 days logs).
    let policy = RetentionPolicy {
        history: std::time::Duration::from_secs(30 * 86_400),
        logs: std::time::Duration::from_secs(7 * 86_400),
    };
    let (events, logs) =
        retention::enforce(&world.pool, policy, Utc::now()).await.expect("retention").expect("lock free");
    assert_eq!(events.partitions_dropped, [partition("events", 40)]);
    assert_eq!(logs.partitions_dropped, [partition("log_lines", 10)]);
    assert!(partitions(&world, "events").await.contains(&partition("events", 0)));
    assert!(!partitions(&world, "events").await.contains(&partition("events", 40)));
    assert_eq!(world.history_count().await, 50 + 2 + 2, "today's rows stay");
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM log_lines").fetch_one(&world.pool).await.expect("lines");
    assert_eq!(lines, 2);

    // DELETE /events?older_than=just after the load: today's partition, so the load goes row by row.
    let deleted = retention::delete_events_older_than(&world.pool, cutoff).await.expect("delete");
    // The hour-old load, and the 10-day-old log.appended event (history of the LOGS stream).
    assert_eq!(deleted.rows_deleted, 50 + 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT execution_id FROM events WHERE stream = 'EXECUTIONS' ORDER BY 1")
            .fetch_all(&world.pool)
            .await
            .expect("left");
    assert_eq!(left, ["fresh", "fresh"]);
}
