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

    let started = Instant::now();
    let _persister = world.persister(&[]).await;
    runcast_testkit::eventually("the whole backlog in the history", Duration::from_secs(600), || async {
        (world.history_count().await == total).then_some(())
    })
    .await
    .expect("drained");
    let elapsed = started.elapsed();
    println!(
        "BENCH event-persister drain: {total} events ({executions} executions x {per_execution}) in {:.2} s = {:.0} events/s \
         (includes process start and schema migration)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
}
