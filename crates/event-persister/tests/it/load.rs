//! 10,000 events across 500 executions: every event in the history once at its offset, and a
//! read model equal to the fold of the events.

use crate::support::{self, WAIT, World};
use runcast_contract::StreamKind;
use runcast_testkit::eventually;

#[tokio::test]
async fn ten_thousand_events_land_once_each_and_the_read_model_is_their_fold() {
    let world = World::start().await;
    let persister = world.persister(&[]).await;

    let published = world.publish(support::load(&world, 500, 20)).await;
    assert_eq!(published.len(), 10_000);
    world.wait_for_history(10_000).await;
    // The test server commits without flushing (synchronous_commit = off): the persister's own
    // sessions do flush, before it acks, and it says so (and that fsync is off).
    let log = persister.recent_log();
    for warning in ["synchronous_commit = off: this service's sessions set it to on", "fsync = off"] {
        assert!(log.contains(warning), "the persister warns {warning:?}:\n{log}");
    }

    let expected: Vec<(String, i64, String)> = published
        .iter()
        .map(|p| ("EXECUTIONS".to_owned(), i64::try_from(p.offset).expect("offset"), p.event.event_id.clone()))
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(world.history().await, expected, "each event once, at its offset");

    let last_offset = published.iter().map(|p| p.offset).max().expect("events");
    eventually("every execution at its last version", WAIT, || async {
        (world.executions().await == support::expected_executions(&published)).then_some(())
    })
    .await
    .unwrap_or_else(|err| {
        panic!("{err}");
    });

    // The low watermark reaches the head, and the api reads it through the library.
    eventually("as_of_offset at the head", WAIT, || async {
        let offset = runcast_store::read_model::as_of_offset(&world.pool, StreamKind::Executions).await.ok()?;
        (offset == last_offset).then_some(())
    })
    .await
    .expect("watermark");

    // Lag is on /readyz and /metrics.
    let http = reqwest::Client::new();
    eventually("lag 0 on /readyz", WAIT, || async {
        let body: serde_json::Value = http.get(persister.http_url("/readyz")).send().await.ok()?.json().await.ok()?;
        (body["details"]["lag"]["EXECUTIONS"] == 0 && body["ready"] == true).then_some(())
    })
    .await
    .expect("readyz details");
    let metrics = http.get(persister.http_url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for name in
        ["runcast_persister_events_written_total", "runcast_persister_lag", "runcast_persister_batch_duration_seconds"]
    {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}
