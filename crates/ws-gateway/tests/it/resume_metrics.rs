//! `/metrics` says where each resume was served from (`runcast_ws_resumes_total{source}`) and how
//! old the newest dispatched event of a stream was (`runcast_ws_delivery_lag_seconds{stream}`).

use crate::helpers::*;
use prost::Message as _;
use runcast_contract::v1::{Event, EventType, ExecutionStatus};
use serde_json::json;

fn started(i: usize) -> Event {
    execution_event("acme", &format!("e-{}", i % 3), "wf", EventType::StepStarted, ExecutionStatus::Running)
}

/// The value of the series `name{labels}` on a `/metrics` page.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn resumes_are_counted_by_source_and_the_delivery_lag_is_the_age_of_the_newest_event() {
    let world = World::start().await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("schema");
    let (_process, gateway) = world.gateway_process(&[("RUNCAST_STREAM_MAX_MESSAGES", "5")]).await;
    let events: Vec<Event> = (0..20).map(started).collect();
    let published = world.publish_many(events.clone()).await;
    // What the persister would have written of the events the stream has dropped.
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

    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    let resumes = [
        ("executions", published[2], true),      // older than the stream: the history
        ("executions:e-1", published[17], true), // still in the stream
        ("workflows:wf", 1_000_000, false),      // beyond the stream's end
    ];
    for (channel, since, recovered) in resumes {
        let (subscribed, _) =
            ws.subscribe(json!({"type": "subscribe", "channel": channel, "since_offset": since})).await;
        assert_eq!(subscribed["recovered"], recovered, "{subscribed}");
    }

    // A live event that the api accepted 30 s ago.
    let mut late = started(21);
    late.occurred_at = Some(prost_types::Timestamp { seconds: now() - 30, nanos: 0 });
    let offset = world.publish(&late).await;
    loop {
        if ws.next_json().await["offset"] == offset {
            break;
        }
    }

    let page = reqwest::get(gateway.url("/metrics")).await.expect("metrics").text().await.expect("body");
    for (source, count) in [("postgres", 1.0), ("jetstream", 1.0), ("unrecoverable", 1.0)] {
        let series = format!("runcast_ws_resumes_total{{source=\"{source}\"}}");
        assert_eq!(value(&page, &series), Some(count), "{series} in\n{page}");
    }
    let lag = value(&page, "runcast_ws_delivery_lag_seconds{stream=\"EXECUTIONS\"}").expect("lag of EXECUTIONS");
    assert!((30.0..60.0).contains(&lag), "lag {lag}");
    assert_eq!(value(&page, "runcast_ws_delivery_lag_seconds{stream=\"LOGS\"}"), Some(0.0), "no event yet");
}
