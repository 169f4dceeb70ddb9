//! PostgreSQL stopped under load, then started again: the persister holds its batches, retries,
//! and everything arrives.

use crate::support::{self, WAIT, World};
use runcast_testkit::eventually;

#[tokio::test]
async fn events_published_while_postgres_is_down_all_arrive_once_it_is_back() {
    let mut world = World::start().await;
    let persister = world.persister(&[]).await;

    let mut events = support::load(&world, 250, 20);
    let later = events.split_off(2000);
    let mut published = world.publish(events).await;
    world.wait_for_history(2000).await;

    // The test server runs with synchronous_commit=off and stops like a crash: flush the WAL
    // first, or its last acked commits could vanish (production commits synchronously).
    sqlx::query("CHECKPOINT").execute(&world.pool).await.expect("checkpoint");
    world.infra.postgres.stop();
    published.extend(world.publish(later).await);
    // The persister noticed and holds its batch (not acking, not dropping) through several
    // seconds of retries (each waits up to the pool's 3 s acquire timeout, then backs off).
    eventually("three attempts to write a held batch", WAIT, || async {
        let retries = persister.metric("runcast_persister_write_retries_total").await;
        (retries >= 3.0).then_some(())
    })
    .await
    .expect("write retries");
    world.infra.postgres.restart().await.expect("postgres back");

    world.wait_for_history(5000).await;
    let mut history: Vec<i64> = world.history().await.iter().map(|row| row.1).collect();
    history.dedup();
    assert_eq!(history.len(), 5000);
    eventually("the read model equal to the fold", WAIT, || async {
        (world.executions().await == support::expected_executions(&published)).then_some(())
    })
    .await
    .expect("read model");
}
