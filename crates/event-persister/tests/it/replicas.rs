//! Two replicas on the same durable consumer end in the same state as one.

use crate::support::{self, WAIT, World};
use runcast_contract::StreamKind;
use runcast_testkit::eventually;

#[tokio::test]
async fn two_replicas_on_one_consumer_reach_the_same_state_as_one() {
    let two = World::start().await;
    let one = World::on(
        runcast_testkit::Infra::start().await.expect("servers"),
        two.infra.isolate().await.expect("isolation"),
    )
    .await;
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
    let (published, _) = tokio::join!(two.publish(events), one.publish(mirrored));
    two.wait_for_history(4000).await;
    one.wait_for_history(4000).await;

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
            support::metric(replica, "runcast_persister_events_written_total").await > 0.0,
            "both replicas took a share of the work"
        );
    }

    let head = published.iter().map(|p| p.offset).max().expect("events");
    eventually("the shared low watermark at the head", WAIT, || async {
        let offset = event_persister::read_model::as_of_offset(&two.pool, StreamKind::Executions).await.ok()?;
        (offset == head).then_some(())
    })
    .await
    .expect("as_of_offset");
}
