//! A writer fetches its next batch while it writes the current one; a graceful stop writes and
//! acks the batch it fetched ahead instead of leaving it to be redelivered after `ack_wait`, and
//! while PostgreSQL holds the write up, JetStream keeps that batch for the writer.

use crate::support::{self, Published, WAIT, World};
use async_nats::jetstream::stream::Stream;
use futures::StreamExt as _;
use runcast_contract::StreamKind;
use runcast_testkit::{ServiceProcess, eventually};

const BATCH: usize = 10;

/// One writer, batches of `BATCH`, that has written a first event; then another session holds
/// the history against writes (reads go on) and `3 × BATCH` more events are published, so the
/// writer's next write waits: until the writer has a batch in that write and one fetched ahead.
struct HeldUp {
    persister: ServiceProcess,
    /// The session holding the history; `None` once released.
    blocker: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    published: Vec<Published>,
    stream: Stream,
}

impl HeldUp {
    async fn start(world: &World, extra: &[(&str, &str)]) -> Self {
        let mut settings = vec![("RUNCAST_WRITERS_PER_STREAM", "1"), ("RUNCAST_BATCH_SIZE", "10")];
        settings.extend_from_slice(extra);
        let persister = world.persister(&settings).await;
        let at = chrono::Utc::now().timestamp();
        let event = |i: usize| {
            let execution = format!("exec-{i}");
            let subject = world.subject(StreamKind::Executions, "acme", &execution);
            (subject, support::execution_events("acme", &execution, 1, at).remove(0))
        };
        world.publish(vec![event(0)]).await;
        world.wait_for_history(1).await;

        let mut blocker = world.pool.begin().await.expect("a transaction");
        sqlx::query("LOCK TABLE events IN EXCLUSIVE MODE").execute(&mut *blocker).await.expect("the history locked");
        let published = world.publish((1..=3 * BATCH).map(event).collect()).await;
        let stream =
            world.jetstream.get_stream(world.topology.stream_name(StreamKind::Executions)).await.expect("the stream");
        let held = Self { persister, blocker: Some(blocker), published, stream };
        eventually("a second batch delivered while the first waits for PostgreSQL", WAIT, || async {
            (held.consumer().await == Some((2 * BATCH, BATCH as u64))).then_some(())
        })
        .await
        .expect("the next batch fetched during the write");
        assert_eq!(world.history_count().await, 1, "nothing written while the history is locked");
        held
    }

    async fn release(&mut self) {
        if let Some(blocker) = self.blocker.take() {
            blocker.rollback().await.expect("the history unlocked");
        }
    }

    /// The durable consumer's delivered-but-unacked and never-delivered message counts.
    async fn consumer(&self) -> Option<(usize, u64)> {
        let info = self.stream.clone().consumer_info("event-persister").await.ok()?;
        Some((info.num_ack_pending, info.num_pending))
    }
}

#[tokio::test]
async fn a_writer_fetches_its_next_batch_while_postgres_holds_the_current_one_and_a_stop_writes_both() {
    let world = World::start().await;
    let mut held = HeldUp::start(&world, &[]).await;

    // Stop while the write waits; the stop is seen once the HTTP listener is gone.
    held.persister.signal(nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let http = reqwest::Client::new();
    eventually("the persister stopping", WAIT, || {
        let readyz = http.get(held.persister.http_url("/readyz")).send();
        async move { readyz.await.is_err().then_some(()) }
    })
    .await
    .expect("the listener closed");
    held.release().await;
    let status = held.persister.wait_exit(WAIT).await.expect("the persister exits");
    assert!(status.success(), "a graceful stop exits 0: {status:?}\n{}", held.persister.recent_log());

    assert_eq!(
        world.history_count().await,
        1 + 2 * BATCH as i64,
        "the batch being written and the one fetched ahead are both written, nothing more fetched"
    );
    assert_eq!(held.consumer().await, Some((0, BATCH as u64)), "both acked, the third batch never delivered");
}

#[tokio::test]
async fn a_batch_fetched_ahead_is_not_handed_to_another_writer_while_postgres_holds_the_write_up() {
    let world = World::start().await;
    let mut held = HeldUp::start(&world, &[("RUNCAST_ACK_WAIT", "5s")]).await;
    // Each held write gives up after ack_wait / 2 and is tried again: three of them outlast
    // ack_wait since the batch ahead was fetched.
    eventually("the write held up past the ack wait", WAIT, || async {
        (held.persister.recent_log().matches("cannot write the batch; holding it").count() >= 3).then_some(())
    })
    .await
    .expect("the write retried");

    // Another writer on the same consumer now gets what nobody was given yet, not the batch
    // fetched ahead (JetStream would redeliver that one first).
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        held.stream.get_consumer("event-persister").await.expect("the durable consumer");
    let mut other = consumer
        .fetch()
        .max_messages(BATCH)
        .expires(std::time::Duration::from_secs(1))
        .messages()
        .await
        .expect("a fetch");
    let mut offsets = Vec::new();
    while let Some(message) = other.next().await {
        let message = message.expect("a message");
        offsets.push(message.info().expect("metadata").stream_sequence);
        message.ack_with(async_nats::jetstream::AckKind::Nak(None)).await.expect("handed back");
    }
    let never_delivered: Vec<u64> = held.published[2 * BATCH..].iter().map(|p| p.offset).collect();
    assert_eq!(offsets, never_delivered, "the batch fetched ahead stayed with its writer");

    held.release().await;
    world.wait_for_history(1 + 3 * BATCH as i64).await;
    assert_eq!(world.history_count().await, 1 + 3 * BATCH as i64, "every event once");
}
