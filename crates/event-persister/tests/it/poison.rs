//! Poison messages — undecodable, contract-breaking, or refused by PostgreSQL — end in
//! `dead_letters` with their raw bytes, subject, offset and reason, are terminated in JetStream,
//! and the valid events around them are persisted.

use crate::support::{self, WAIT, World};
use async_nats::HeaderMap;
use prost::Message as _;
use runcast_contract::StreamKind;
use runcast_contract::v1::event::Payload;
use runcast_testkit::eventually;

async fn publish_raw(world: &World, subject: &str, id: &str, bytes: Vec<u8>) -> u64 {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    world
        .jetstream
        .publish_with_headers(subject.to_owned(), headers, bytes.into())
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

#[tokio::test]
async fn poison_messages_go_to_dead_letters_and_the_stream_moves_on() {
    let world = World::start().await;
    let persister = world.persister(&[]).await;
    let subject = world.subject(StreamKind::Executions, "acme", "exec-1");
    let events = support::execution_events("acme", "exec-1", 6, chrono::Utc::now().timestamp());

    let mut published = world.publish(events[..2].iter().map(|e| (subject.clone(), e.clone())).collect()).await;
    let garbage = b"\xde\xad\xbe\xef not protobuf".to_vec();
    let garbage_offset = publish_raw(&world, &subject, "garbage-1", garbage.clone()).await;
    // A valid event of another execution, on exec-1's subject.
    let stranger = support::execution_events("acme", "exec-9", 1, chrono::Utc::now().timestamp()).remove(0);
    let misrouted_offset = publish_raw(&world, &subject, "misrouted-1", stranger.encode_to_vec()).await;
    let mut wrong_version = events[2].clone();
    wrong_version.version = 99; // its state says 3
    let wrong_offset = publish_raw(&world, &subject, "wrong-1", wrong_version.encode_to_vec()).await;
    published.extend(world.publish(events[2..].iter().map(|e| (subject.clone(), e.clone())).collect()).await);

    // A log line PostgreSQL refuses (NUL in text) between two good ones.
    let logs = world.subject(StreamKind::Logs, "acme", "exec-1");
    let mut refused = support::log_event("acme", "exec-1", 3, 1);
    if let Some(Payload::LogsAppended(appended)) = &mut refused.payload {
        appended.lines[0].text = "nul \0 byte".into();
    }
    let log_offsets = world
        .publish(vec![
            (logs.clone(), support::log_event("acme", "exec-1", 1, 2)),
            (logs.clone(), refused.clone()),
            (logs.clone(), support::log_event("acme", "exec-1", 4, 2)),
        ])
        .await;

    world.wait_for_history(6 + 2).await;
    eventually("the read model at the last valid event", WAIT, || async {
        (world.executions().await == support::expected_executions(&published)).then_some(())
    })
    .await
    .expect("valid events persisted");
    let log_lines: i64 =
        sqlx::query_scalar("SELECT count(*) FROM log_lines").fetch_one(&world.pool).await.expect("count");
    assert_eq!(log_lines, 4, "the lines around the refused one are stored");

    // Terminated, not left pending or redelivered. A message is terminated only after its dead
    // letter committed, so past this point every dead letter is in (the history count above does
    // not say so: a batch of poison alone commits on its own, possibly later).
    for kind in [StreamKind::Executions, StreamKind::Logs] {
        let mut stream = world.jetstream.get_stream(world.topology.stream_name(kind)).await.expect("stream");
        eventually("nothing pending on the consumer", WAIT, || {
            let info = stream.consumer_info("event-persister");
            async move {
                let info = info.await.ok()?;
                (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
            }
        })
        .await
        .expect("all acked or terminated");
        let _ = stream.info().await;
    }
    let dead: Vec<(String, String, i64, Vec<u8>, String)> = sqlx::query_as(
        "SELECT stream, subject, stream_offset, raw, error FROM dead_letters ORDER BY stream, stream_offset",
    )
    .fetch_all(&world.pool)
    .await
    .expect("dead letters");
    assert_eq!(dead.len(), 4, "{dead:?}");
    let (stream, dead_subject, offset, raw, error) = &dead[0];
    assert_eq!(
        (stream.as_str(), dead_subject.as_str(), *offset, raw),
        ("EXECUTIONS", subject.as_str(), i64::try_from(garbage_offset).expect("offset"), &garbage)
    );
    assert!(error.contains("not a runcast.v1.Event"), "{error}");
    assert_eq!(dead[1].2, i64::try_from(misrouted_offset).expect("offset"));
    assert!(dead[1].4.contains("does not name the event's tenant"), "{}", dead[1].4);
    assert_eq!(dead[2].2, i64::try_from(wrong_offset).expect("offset"));
    assert!(dead[2].4.contains("version"), "{}", dead[2].4);
    assert_eq!(dead[2].3, wrong_version.encode_to_vec());
    assert_eq!(
        (dead[3].0.as_str(), dead[3].1.as_str(), dead[3].2),
        ("LOGS", logs.as_str(), i64::try_from(log_offsets[1].offset).expect("offset"))
    );
    assert!(dead[3].4.contains("rejected"), "{}", dead[3].4);
    assert!(world.executions().await.keys().all(|(_, id)| id != "exec-9"), "the stranger is not applied");

    eventually("the dead letter metric", WAIT, || async {
        (persister.metric("runcast_persister_dead_letters_total").await == 4.0).then_some(())
    })
    .await
    .expect("metric");
}
