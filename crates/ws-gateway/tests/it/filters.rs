//! Filters select exactly the matching events; a token of one tenant never sees another's data.

use crate::helpers::*;
use runcast_contract::v1::{Event, EventType, ExecutionStatus};
use serde_json::{Value, json};

/// Events until (and including) the one at `marker`.
async fn until_marker(ws: &mut WsClient, marker: u64) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let event = ws.events(1).await.remove(0);
        let offset = event["offset"].as_u64().expect("offset");
        events.push(event);
        if offset >= marker {
            return events;
        }
    }
}

#[tokio::test]
async fn each_filter_selects_exactly_the_matching_events() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let token = token("acme", "alice", 600);
    let filters = [
        json!({"statuses": ["failed"]}),
        json!({"types": ["execution.started"]}),
        json!({"workflow_ids": ["wf-b"]}),
        json!({"execution_ids": ["e-2"]}),
    ];
    let mut clients = Vec::new();
    for filter in &filters {
        let mut ws = gateway.connect(&token).await;
        ws.subscribe(json!({"type": "subscribe", "channel": "executions", "filters": filter})).await;
        clients.push(ws);
    }
    let mut events: Vec<Event> = Vec::new();
    for (execution, workflow) in [("e-1", "wf-a"), ("e-2", "wf-b"), ("e-3", "wf-b")] {
        for (kind, status) in [
            (EventType::ExecutionCreated, ExecutionStatus::Pending),
            (EventType::ExecutionStarted, ExecutionStatus::Running),
            (EventType::ExecutionFailed, ExecutionStatus::Failed),
        ] {
            events.push(execution_event("acme", execution, workflow, kind, status));
        }
    }
    // Matches every filter, so every client knows when it has seen everything.
    events.push(execution_event("acme", "e-2", "wf-b", EventType::ExecutionStarted, ExecutionStatus::Failed));
    let offsets_published = world.publish_many(events.clone()).await;
    let marker = *offsets_published.last().expect("published");

    let predicates: [&dyn Fn(&Event) -> bool; 4] = [
        &|e| matches!(&e.state, Some(runcast_contract::v1::event::State::Execution(x)) if x.status == ExecutionStatus::Failed as i32),
        &|e| e.r#type == EventType::ExecutionStarted as i32,
        &|e| e.workflow_id == "wf-b",
        &|e| e.execution_id == "e-2",
    ];
    for (ws, predicate) in clients.iter_mut().zip(predicates) {
        let expected: Vec<u64> =
            events.iter().zip(&offsets_published).filter(|(e, _)| predicate(e)).map(|(_, o)| *o).collect();
        let got = until_marker(ws, marker).await;
        assert_eq!(offsets(&got), expected);
    }
}

#[tokio::test]
async fn a_tenant_never_receives_or_snapshots_another_tenants_data() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let mut spy = gateway.connect(&token("globex", "mallory", 600)).await;
    for channel in ["executions", "workflows:wf", "approvals", "logs:e-1", "agents", "agents:a-1"] {
        spy.subscribe(json!({"type": "subscribe", "channel": channel, "since_offset": 0})).await;
    }
    // Tenant acme's data, published before and after the spy subscribed.
    world.publish(&execution_event("acme", "e-1", "wf", EventType::ExecutionCreated, ExecutionStatus::Pending)).await;
    let (subscribed, before) =
        spy.subscribe(json!({"type": "subscribe", "channel": "executions:e-1", "snapshot": true})).await;
    assert_eq!(before.len(), 1, "a snapshot only: {before:?}");
    assert_eq!(before[0]["type"], "snapshot");
    assert!(before[0]["data"].is_null(), "no acme state for globex: {}", before[0]);
    assert!(subscribed["offset"].is_u64());
    world.publish(&execution_event("acme", "e-1", "wf", EventType::ApprovalRequired, ExecutionStatus::Blocked)).await;
    world.publish(&agent_event("acme", "a-1", EventType::AgentOnline)).await;
    let mut log = execution_event("acme", "e-1", "wf", EventType::LogAppended, ExecutionStatus::Running);
    log.state = None;
    world.publish(&log).await;
    // The spy's own event: the first and only thing it may see.
    let own = world
        .publish(&execution_event("globex", "g-1", "wf", EventType::ExecutionCreated, ExecutionStatus::Pending))
        .await;
    let seen = spy.events(1).await;
    assert_eq!(seen[0]["offset"], own, "{seen:?}");
    assert_eq!(seen[0]["data"]["tenant_id"], "globex");
    let next = tokio::time::timeout(std::time::Duration::from_millis(500), spy.next()).await;
    match next {
        Err(_) => {}
        Ok(Received::Json(value)) => assert_eq!(value["data"]["tenant_id"], "globex", "{value}"),
        Ok(Received::Closed(code)) => panic!("closed: {code:?}"),
    }
}
