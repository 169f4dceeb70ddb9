//! Snapshots outlive the stream (DESIGN §7): once the stream has aged an entity's events out, the
//! snapshot is its read model row, with `offset` = the row's `last_offset`; PostgreSQL down at that
//! moment is an `unavailable` error, never "no data".

use crate::helpers::*;
use prost::Message as _;
use runcast_contract::v1::{Agent, AgentStatus, EventType, ExecutionStatus, event};
use runcast_contract::{EntityId, StreamKind};
use runcast_testkit::eventually;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_snapshot_of_an_entity_the_stream_aged_out_comes_from_the_read_model() {
    let mut world = World::start().await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("schema");
    let gateway = world.gateway(&[("max-age", "2s"), ("duplicate-window", "1s")]).await;

    // A paused execution; the persister writes its row, then the stream forgets the event.
    let paused = execution_event("acme", "e-aged", "wf", EventType::ExecutionPaused, ExecutionStatus::Paused);
    let offset = world.publish(&paused).await;
    let Some(event::State::Execution(state)) = paused.state.clone() else { panic!("an execution state") };
    sqlx::query(
        "INSERT INTO executions (tenant_id, execution_id, workflow_id, status, version, last_offset, state, \
         created_at, updated_at) VALUES ('acme', 'e-aged', 'wf', 'paused', $1, $2, $3, now(), now())",
    )
    .bind(state.version as i64)
    .bind(offset as i64)
    .bind(state.encode_to_vec())
    .execute(&pool)
    .await
    .expect("read model row");
    let stream = world.jetstream.get_stream(world.topology.stream_name(StreamKind::Executions)).await.expect("stream");
    let subject = world.topology.entity_subject(
        StreamKind::Executions,
        &EntityId::parse("tenant", "acme").expect("id"),
        &EntityId::parse("execution", "e-aged").expect("id"),
    );
    eventually("the stream to age the event out", Duration::from_secs(30), || {
        let (stream, subject) = (&stream, subject.clone());
        async move { stream.direct_get_last_for_subject(subject).await.is_err().then_some(()) }
    })
    .await
    .expect("aged out");

    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    let (subscribed, before) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions:e-aged", "snapshot": true})).await;
    assert_eq!(before.len(), 1, "{before:?}");
    let snapshot = &before[0];
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["offset"], offset, "{snapshot}");
    assert_eq!(snapshot["data"]["status"], "paused", "{snapshot}");
    assert_eq!(snapshot["data"]["version"], state.version, "{snapshot}");
    assert_eq!(snapshot["data"]["offset"], offset, "the state's offset is its last event's: {snapshot}");
    assert!(subscribed["epoch"].is_string(), "{subscribed}");
    // Live after the snapshot.
    let resumed = world
        .publish(&execution_event("acme", "e-aged", "wf", EventType::ExecutionResumed, ExecutionStatus::Running))
        .await;
    let next = ws.events(1).await;
    assert_eq!(offsets(&next), [resumed]);
    assert_eq!(next[0]["data"]["state"]["offset"], resumed, "live events carry their offset in the state too");

    // An agent known only to the read model.
    let agent = Agent {
        agent_id: "a-aged".into(),
        tenant_id: "acme".into(),
        status: AgentStatus::Online.into(),
        version: 3,
        ..Default::default()
    };
    sqlx::query(
        "INSERT INTO agents (tenant_id, agent_id, status, timeout_seconds, version, last_offset, state, \
         last_heartbeat_at) VALUES ('acme', 'a-aged', 'online', 30, 3, 7, $1, now())",
    )
    .bind(agent.encode_to_vec())
    .execute(&pool)
    .await
    .expect("agent row");
    let (_, before) = ws.subscribe(json!({"type": "subscribe", "channel": "agents:a-aged", "snapshot": true})).await;
    assert_eq!(before[0]["offset"], 7, "{before:?}");
    assert_eq!((&before[0]["data"]["agent_id"], &before[0]["data"]["offset"]), (&json!("a-aged"), &json!(7)));
    // Nobody knows this one: no data, no error.
    let (_, before) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions:e-none", "snapshot": true})).await;
    assert!(before[0]["data"].is_null(), "{before:?}");

    // PostgreSQL down: the read model cannot say, so the answer is `unavailable`.
    world.infra.postgres.stop();
    ws.send(json!({"type": "subscribe", "channel": "executions:e-other", "snapshot": true, "id": "s"})).await;
    let error = ws.until("error").await;
    assert_eq!((&error["code"], &error["id"]), (&json!("unavailable"), &json!("s")), "{error}");
}
