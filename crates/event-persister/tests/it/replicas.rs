//! Two replicas on the same durable consumer end in the same state as one.

use crate::support::{self, WAIT, World};
use runcast_contract::StreamKind;
use runcast_testkit::eventually;

#[tokio::test]
async fn two_replicas_on_one_consumer_reach_the_same_state_as_one() {
    let two = World::start().await;
    let one = World::start().await;
    // Small batches so both replicas get a share.
    let small = [("RUNCAST_BATCH_SIZE", "100")];
    let first = two.persister(&small).await;
    let second = two.persister(&small).await;
    let _single = one.persister(&small).await;

    // The same events, in the same order, into both worlds.
    let events = support::load(&two, 200, 20);
    let mirrored: Vec<_> = events
        .iter()
        .map(|(_, event)| (one.subject(StreamKind::Executions, &event.tenant_id, &event.execution_id), event.clone()))
        .collect();
    // Meanwhile, as_of_offset must stay a low watermark: every offset at or below it stored.
    let done = tokio_util::sync::CancellationToken::new();
    let watcher = tokio::spawn(watch_the_watermark(two.pool.clone(), done.clone()));
    let (published, _) = tokio::join!(two.publish(events), one.publish(mirrored));
    two.wait_for_history(4000).await;
    one.wait_for_history(4000).await;
    done.cancel();
    let (samples, highest) = watcher.await.expect("watcher");
    assert!(samples > 0 && highest > 0, "the watermark moved while the load was written");

    eventually("both read models equal to the fold", WAIT, || async {
        let expected = support::expected_executions(&published);
        (two.executions().await == expected && one.executions().await == expected).then_some(())
    })
    .await
    .expect("read models");
    assert_eq!(
        support::read_model_snapshot(&two.pool).await,
        support::read_model_snapshot(&one.pool).await,
        "two replicas and one wrote the same rows"
    );
    assert_eq!(two.history().await, one.history().await);
    for replica in [&first, &second] {
        assert!(
            replica.metric("runcast_persister_events_written_total").await > 0.0,
            "both replicas took a share of the work"
        );
    }

    let head = published.iter().map(|p| p.offset).max().expect("events");
    eventually("the shared low watermark at the head", WAIT, || async {
        let offset = runcast_store::read_model::as_of_offset(&two.pool, StreamKind::Executions).await.ok()?;
        (offset == head).then_some(())
    })
    .await
    .expect("as_of_offset");
}

/// Reads as_of_offset over and over until `done`, checking that every offset at or below it is in
/// the history (the stream is fresh, so offsets 1..=W are all EXECUTIONS events). Returns how
/// many non-zero samples it took and the highest one.
async fn watch_the_watermark(pool: sqlx::PgPool, done: tokio_util::sync::CancellationToken) -> (u32, u64) {
    let (mut samples, mut highest) = (0, 0);
    while !done.is_cancelled() {
        // Watermark first, rows second: rows it covers were committed before it was recorded.
        let watermark = runcast_store::read_model::as_of_offset(&pool, StreamKind::Executions).await.expect("read");
        let stored: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT stream_offset) FROM events WHERE stream = 'EXECUTIONS' AND stream_offset <= $1",
        )
        .bind(i64::try_from(watermark).expect("offset"))
        .fetch_one(&pool)
        .await
        .expect("count");
        assert_eq!(stored, i64::try_from(watermark).expect("offset"), "as_of_offset {watermark} ran ahead of the rows");
        if watermark > 0 {
            samples += 1;
            highest = highest.max(watermark);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (samples, highest)
}
