//! Resume from an offset on another replica: exactly the missed events, in order, then live, no
//! duplicate — over WebSocket (`since_offset`) and SSE (`Last-Event-ID`); from the PostgreSQL
//! history when the stream no longer holds the offset; `recovered: false` when nothing does.

use crate::helpers::*;
use prost::Message as _;
use runcast_contract::v1::{Event, EventType, ExecutionStatus};
use serde_json::json;

fn started(i: usize) -> Event {
    execution_event("acme", &format!("e-{}", i % 7), "wf", EventType::StepStarted, ExecutionStatus::Running)
}

#[tokio::test]
async fn a_client_resumes_on_the_other_replica_with_exactly_the_missed_events_then_live() {
    let world = World::start().await;
    // One replay at a time: the second resume on a replica waits for the first one's slot.
    let (a, b) =
        (world.gateway(&[("replay-concurrency", "1")]).await, world.gateway(&[("replay-concurrency", "1")]).await);
    let token = token("acme", "alice", 600);

    let mut ws = a.connect(&token).await;
    ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let first = world.publish(&started(0)).await;
    let seen = ws.events(1).await;
    assert_eq!(offsets(&seen), [first]);
    drop(ws);

    let missed = world.publish_many((1..=500).map(started)).await;
    assert_eq!(missed.len(), 500);

    // WebSocket on the other replica.
    let mut ws = b.connect(&token).await;
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": first})).await;
    assert_eq!(offsets(&replayed), missed, "exactly the missed events, in order");
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(subscribed["replayed"], 500, "{subscribed}");
    assert_eq!(subscribed["offset"], missed[499], "{subscribed}");

    // SSE on the first replica, resuming by Last-Event-ID.
    let mut sse = SseClient::connect(
        &a.url("/sse?channel=executions"),
        &[("Authorization", format!("Bearer {token}")), ("Last-Event-ID", first.to_string())],
    )
    .await;
    let records = sse.events(500).await;
    let ids: Vec<u64> = records.iter().map(|r| r.id.as_deref().and_then(|id| id.parse().ok()).expect("id")).collect();
    assert_eq!(ids, missed);
    let subscribed = sse.until("subscribed").await;
    assert_eq!(subscribed.data["recovered"], true);

    // Then live, with no duplicate in between.
    let live = world.publish(&started(501)).await;
    let next = ws.next_json().await;
    assert_eq!(next["offset"], live, "the next frame is the live event: {next}");
    let next = sse.next().await.expect("open");
    assert_eq!(next.id, Some(live.to_string()));
}

#[tokio::test]
async fn offsets_older_than_the_stream_are_served_from_the_history() {
    let world = World::start().await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("schema");
    let gateway = world.gateway(&[("max-messages", "5")]).await;

    let events: Vec<Event> = (0..20).map(started).collect();
    let published = world.publish_many(events.clone()).await;
    // What the persister would have written for the events the stream has dropped by now.
    for (event, offset) in events.iter().zip(&published).take(15) {
        sqlx::query(
            "INSERT INTO events (occurred_at, event_id, stream, stream_offset, tenant_id, \
             execution_id, workflow_id, event_type, version, body) \
             VALUES (now(), $1, 'EXECUTIONS', $2, $3, $4, $5, 'step.started', $6, $7)",
        )
        .bind(uuid::Uuid::parse_str(&event.event_id).expect("uuid"))
        .bind(*offset as i64)
        .bind(&event.tenant_id)
        .bind(&event.execution_id)
        .bind(&event.workflow_id)
        .bind(event.version as i64)
        .bind(event.encode_to_vec())
        .execute(&pool)
        .await
        .expect("history row");
    }

    let token = token("acme", "alice", 600);
    let mut ws = gateway.connect(&token).await;
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": published[2]})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(offsets(&replayed), published[3..], "history, then the stream");
    assert_eq!(replayed[0]["data"]["execution_id"], events[3].execution_id);

    // One execution only: the history is filtered like the stream.
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions:e-1", "since_offset": 0})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let expected: Vec<u64> =
        events.iter().zip(&published).filter(|(e, _)| e.execution_id == "e-1").map(|(_, o)| *o).collect();
    assert_eq!(offsets(&replayed), expected);

    // Beyond everything: not recovered, live from the head.
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "workflows:wf", "since_offset": 1_000_000})).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert!(replayed.is_empty());
    let live = world.publish(&started(21)).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let value = ws.next_json().await;
        if value["offset"] == live {
            seen.push(value["channel"].as_str().unwrap_or_default().to_owned());
        }
    }
    seen.sort();
    assert_eq!(seen, ["executions", "workflows:wf"]);
}

#[tokio::test]
async fn an_offset_the_history_does_not_reach_is_not_recovered() {
    let world = World::start().await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("schema");
    let gateway = world.gateway(&[("max-messages", "3")]).await;
    let published = world.publish_many((0..10).map(started)).await;
    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": published[0]})).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert!(replayed.is_empty());
}

/// The `runcast_ws_resumes_total` counter of `source` on `/metrics`.
async fn resumes_from(gateway: &Gateway, source: &str) -> Option<f64> {
    let page = reqwest::get(gateway.url("/metrics")).await.expect("metrics").text().await.expect("body");
    let series = format!("runcast_ws_resumes_total{{source=\"{source}\"}}");
    page.lines().find_map(|line| line.strip_prefix(series.as_str())?.trim().parse().ok())
}

#[tokio::test]
async fn a_resume_within_the_recent_window_is_served_from_memory_and_an_older_one_is_not() {
    let world = World::start().await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("schema");
    // The stream keeps 3 events and the history none: only the replica's window of the last 8
    // events it saw live can serve a resume.
    let gateway = world.gateway(&[("max-messages", "3"), ("recent-events", "8")]).await;
    // One at a time, each read by the live feed before the next pushes the oldest out.
    let mut published = Vec::new();
    for i in 0..12 {
        let offset = world.publish(&started(i)).await;
        runcast_testkit::eventually("the live feed to read the event", WAIT, || async {
            (gateway.stats().await["streams"]["EXECUTIONS"]["head"].as_u64() >= Some(offset)).then_some(())
        })
        .await
        .expect("read live");
        published.push(offset);
    }
    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;

    // Within the window: the 6 events after the 6th, exactly, though the stream dropped 3 of them
    // and the history holds none.
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": published[5]})).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(offsets(&replayed), published[6..]);
    assert_eq!(resumes_from(&gateway, "memory").await, Some(1.0));

    // Before the window, with neither the stream nor the history holding it: not recovered.
    let (subscribed, replayed) =
        ws.subscribe(json!({"type": "subscribe", "channel": "executions:e-1", "since_offset": published[0]})).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert!(replayed.is_empty());
    assert_eq!(resumes_from(&gateway, "memory").await, Some(1.0));
    assert_eq!(resumes_from(&gateway, "unrecoverable").await, Some(1.0));
}
