//! Live fan-out: one event reaches WebSocket and SSE clients on every replica, in offset order.

use crate::helpers::*;
use runcast_contract::v1::{EventType, ExecutionStatus};
use serde_json::json;

#[tokio::test]
async fn events_reach_websocket_and_sse_clients_on_two_replicas_in_offset_order() {
    let world = World::start().await;
    let replicas = [world.gateway(&[]).await, world.gateway(&[]).await];
    let token = token("acme", "alice", 600);
    let mut sockets = Vec::new();
    let mut streams = Vec::new();
    for replica in &replicas {
        let mut ws = replica.connect(&token).await;
        let (subscribed, _) = ws.subscribe(json!({"type": "subscribe", "channel": "executions", "id": "s1"})).await;
        assert_eq!(subscribed["channel"], "executions");
        assert_eq!(subscribed["id"], "s1");
        assert!(subscribed["offset"].is_u64());
        assert!(subscribed["timestamp"].is_string());
        sockets.push(ws);
        streams.push(replica.sse("executions", &token).await);
    }

    let mut published = Vec::new();
    for (kind, status) in [
        (EventType::ExecutionCreated, ExecutionStatus::Pending),
        (EventType::ExecutionStarted, ExecutionStatus::Running),
        (EventType::ExecutionCompleted, ExecutionStatus::Completed),
    ] {
        published.push(world.publish(&execution_event("acme", "e-1", "wf-1", kind, status)).await);
    }

    for ws in &mut sockets {
        let events = ws.events(3).await;
        assert_eq!(offsets(&events), published);
        assert_strictly_increasing(&offsets(&events));
        let first = &events[0];
        assert_eq!(first["type"], "execution.created");
        assert_eq!(first["channel"], "executions");
        assert_eq!(first["data"]["execution_id"], "e-1");
        assert_eq!(first["data"]["offset"], published[0]);
        assert_eq!(first["data"]["state"]["status"], "pending");
        assert_eq!(events[2]["data"]["state"]["status"], "completed");
    }
    for sse in &mut streams {
        let records = sse.events(3).await;
        let ids: Vec<u64> =
            records.iter().map(|r| r.id.as_deref().and_then(|id| id.parse().ok()).expect("numeric id")).collect();
        assert_eq!(ids, published);
        assert_eq!(records[1].event.as_deref(), Some("execution.started"));
        assert_eq!(records[1].data["offset"], published[1]);
        assert_eq!(records[1].data["channel"], "executions");
    }

    let stats = replicas[0].stats().await;
    assert_eq!(stats["connections"]["websocket"], 1, "{stats}");
    assert_eq!(stats["connections"]["sse"], 1, "{stats}");
    assert_eq!(stats["users"], 1, "{stats}");
    assert_eq!(stats["subscriptions"]["executions"], 2, "{stats}");

    let metrics = reqwest::get(replicas[0].url("/metrics")).await.expect("metrics").text().await.expect("text");
    for name in ["runcast_ws_connections", "runcast_ws_messages_out_total", "runcast_ws_upstream_events_total"] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}
