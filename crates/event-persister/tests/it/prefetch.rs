//! A writer fetches its next batch while it writes the current one, and a graceful stop writes and
//! acks the batch it fetched ahead instead of leaving it to be redelivered after `ack_wait`.

use crate::support::{self, WAIT, World};
use async_nats::jetstream::consumer::Info;
use runcast_contract::StreamKind;
use runcast_testkit::eventually;

const BATCH: usize = 10;

#[tokio::test]
async fn a_writer_fetches_its_next_batch_while_postgres_holds_the_current_one_and_a_stop_writes_both() {
    let world = World::start().await;
    let mut persister = world.persister(&[("RUNCAST_WRITERS_PER_STREAM", "1"), ("RUNCAST_BATCH_SIZE", "10")]).await;
    let at = chrono::Utc::now().timestamp();
    let event = |i: usize| {
        let execution = format!("exec-{i}");
        let subject = world.subject(StreamKind::Executions, "acme", &execution);
        (subject, support::execution_events("acme", &execution, 1, at).remove(0))
    };
    world.publish(vec![event(0)]).await;
    world.wait_for_history(1).await;

    // Another session holds the history against writes (reads go on): the next write waits.
    let mut blocker = world.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut *blocker).await.expect("the history locked");
    world.publish((1..=3 * BATCH).map(event).collect()).await;
    let stream =
        world.jetstream.get_stream(world.topology.stream_name(StreamKind::Executions)).await.expect("the stream");
    let consumer = || {
        let info = stream.consumer_info("event-persister");
        async move { info.await.ok().map(|info: Info| (info.num_ack_pending, info.num_pending)) }
    };
    eventually("a second batch delivered while the first waits for PostgreSQL", WAIT, || {
        let info = consumer();
        async move { (info.await == Some((2 * BATCH, BATCH as u64))).then_some(()) }
    })
    .await
    .expect("the next batch fetched during the write");
    assert_eq!(world.history_count().await, 1, "nothing written while the history is locked");

    // Stop while the write waits; the stop is seen once the HTTP listener is gone.
    persister.signal(nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let http = reqwest::Client::new();
    eventually("the persister stopping", WAIT, || {
        let readyz = http.get(persister.http_url("/readyz")).send();
        async move { readyz.await.is_err().then_some(()) }
    })
    .await
    .expect("the listener closed");
    blocker.rollback().await.expect("the history unlocked");
    let status = persister.wait_exit(WAIT).await.expect("the persister exits");
    assert!(status.success(), "a graceful stop exits 0: {status:?}\n{}", persister.recent_log());

    assert_eq!(
        world.history_count().await,
        1 + 2 * BATCH as i64,
        "the batch being written and the one fetched ahead are both written, nothing more fetched"
    );
    assert_eq!(consumer().await, Some((0, BATCH as u64)), "both acked, the third batch never delivered");
}
