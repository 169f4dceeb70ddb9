//! Throughput measurement (design target: 20,000 events/s on 2 cores with PostgreSQL on the same
//! machine). Ignored by default: run with `make bench` (release build) and read the printed rate.

use crate::support::{self, World};
use std::time::{Duration, Instant};

#[tokio::test]
#[ignore = "a measurement, not a test"]
async fn bench_drain_throughput() {
    let executions: usize = std::env::var("BENCH_EXECUTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let per_execution = 20;
    let total = (executions as u64 * per_execution) as i64;
    let world = World::start().await;
    // The backlog is published first, so the persister's drain rate is measured alone.
    let published = world.publish(support::load(&world, executions, per_execution)).await;
    assert_eq!(published.len() as i64, total);

    // Progress is read from `applied_offsets` (one row per stream): counting the history while it
    // grows would take CPU from the persister being measured.
    let applied = || async {
        sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(applied_offset), 0)::bigint FROM applied_offsets")
            .fetch_one(&world.pool)
            .await
            .unwrap_or(0)
    };
    let started = Instant::now();
    // The persister's own defaults, unless BENCH_BATCH_SIZE / BENCH_WRITERS try others.
    let settings: Vec<(&str, String)> =
        [("RUNCAST_BATCH_SIZE", "BENCH_BATCH_SIZE"), ("RUNCAST_WRITERS_PER_STREAM", "BENCH_WRITERS")]
            .into_iter()
            .filter_map(|(name, knob)| std::env::var(knob).ok().map(|value| (name, value)))
            .collect();
    let settings: Vec<(&str, &str)> = settings.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let _persister = world.persister(&settings).await;
    let tenth = total / 10;
    runcast_testkit::eventually("a tenth of the backlog applied", Duration::from_secs(600), || async {
        (applied().await >= tenth).then_some(())
    })
    .await
    .expect("draining");
    let steady_from = (Instant::now(), applied().await);
    runcast_testkit::eventually("the whole backlog applied", Duration::from_secs(600), || async {
        (applied().await >= total).then_some(())
    })
    .await
    .expect("drained");
    let elapsed = started.elapsed();
    let steady = steady_from.0.elapsed();
    assert_eq!(world.history_count().await, total, "every event in the history, once");
    println!(
        "BENCH event-persister drain: {total} events ({executions} executions x {per_execution}): sustained {:.0} events/s \
         after the first tenth; {:.0} events/s over {:.2} s including process start and schema migration",
        (total - steady_from.1) as f64 / steady.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
}
