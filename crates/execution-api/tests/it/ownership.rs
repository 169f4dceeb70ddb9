//! Ownership and liveness (DESIGN §7): the agent that starts an execution owns it; when the agent
//! stays offline past the grace, each execution it owns fails exactly once (two api replicas
//! sweeping); an agent back within the grace keeps its executions; a running execution silent
//! past its `heartbeat_timeout_seconds` fails.

use crate::support::{Stack, admin, agents, events_of, executions};
use runcast_contract::v1::*;
use std::time::Duration;

fn start(id: &str, agent: &str) -> UpdateExecutionStatusRequest {
    UpdateExecutionStatusRequest {
        execution_id: id.into(),
        status: ExecutionStatus::Running.into(),
        agent_id: agent.into(),
        ..Default::default()
    }
}

fn beat(agent: &str, running: &[&str]) -> HeartbeatRequest {
    HeartbeatRequest {
        agent_id: agent.into(),
        timeout_seconds: 1,
        running_execution_ids: running.iter().map(|id| (*id).to_owned()).collect(),
        ..Default::default()
    }
}

fn failed_events(events: &[Event]) -> usize {
    events.iter().filter(|event| event.r#type == i32::from(EventType::ExecutionFailed)).count()
}

#[tokio::test]
async fn executions_of_a_lost_agent_fail_once_after_the_grace_and_a_returning_agent_keeps_its_own() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let settings = [("RUNCAST_AGENT_LOST_GRACE", "4s"), ("RUNCAST_SWEEP_INTERVAL", "300ms")];
    let (mut first, mut second) = tokio::join!(stack.api(&settings), stack.api(&settings));
    let token = admin();
    let mut client = executions(&mut first, Some(&token)).await;
    let mut presence = agents(&mut second, Some(&token)).await;

    // worker-lost owns three executions: running, paused and blocked; worker-back owns one.
    let mut owned = Vec::new();
    for _ in 0..3 {
        let id = crate::support::create(&mut client, "render").await;
        let started = client.update_execution_status(start(&id, "worker-lost")).await.expect("starts").into_inner();
        assert_eq!(started.agent_id, "worker-lost", "the starting agent owns it");
        owned.push(id);
    }
    client
        .pause_execution(PauseExecutionRequest { execution_id: owned[1].clone(), ..Default::default() })
        .await
        .expect("pause");
    let blocked = client
        .request_approval(RequestApprovalRequest {
            execution_id: owned[2].clone(),
            approval_id: "go".into(),
            ..Default::default()
        })
        .await
        .expect("block")
        .into_inner();
    assert_eq!(blocked.agent_id, "worker-lost", "every later state names the owner");
    let kept = crate::support::create(&mut client, "render").await;
    client.update_execution_status(start(&kept, "worker-back")).await.expect("starts");
    let events = events_of(&stack, &kept).await;
    assert_eq!(events.last().map(|event| event.agent_id.as_str()), Some("worker-back"), "events carry agent_id");

    let owned_ids: Vec<&str> = owned.iter().map(String::as_str).collect();
    let lost_agent = presence.heartbeat(beat("worker-lost", &owned_ids)).await.expect("online").into_inner();
    assert_eq!(lost_agent.running_execution_ids.len(), 3);
    presence.heartbeat(beat("worker-back", &[kept.as_str()])).await.expect("online");

    // Both stop. worker-back returns as soon as it is seen offline, well within the grace.
    runcast_testkit::eventually("worker-back to go offline", Duration::from_secs(20), || async {
        let agent = crate::support::events_on(&stack, runcast_contract::StreamKind::Agents, "worker-back").await;
        agent.last().filter(|event| event.r#type == i32::from(EventType::AgentOffline)).map(|_| ())
    })
    .await
    .expect("offline");
    let back = presence.heartbeat(beat("worker-back", &[kept.as_str()])).await.expect("back").into_inner();
    assert_eq!(back.status, i32::from(AgentStatus::Online));
    let keep_alive = {
        let mut presence = presence.clone();
        let kept = kept.clone();
        tokio::spawn(async move {
            loop {
                let _ = presence.heartbeat(beat("worker-back", &[kept.as_str()])).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    for id in &owned {
        let failed = runcast_testkit::eventually(&format!("{id} to fail"), Duration::from_secs(40), || {
            let mut client = client.clone();
            let id = id.clone();
            async move {
                let execution = client.get_execution(GetExecutionRequest { execution_id: id }).await.ok()?.into_inner();
                (execution.status == i32::from(ExecutionStatus::Failed)).then_some(execution)
            }
        })
        .await
        .expect("a lost agent's execution fails");
        assert_eq!(failed.error, "agent worker-lost went offline");
    }
    // worker-lost's executions failed after the grace; worker-back's, whose agent came back, runs on.
    let survivor = client.get_execution(GetExecutionRequest { execution_id: kept.clone() }).await.expect("get");
    assert_eq!(survivor.into_inner().status, i32::from(ExecutionStatus::Running));
    keep_alive.abort();

    // Exactly one failure each, whichever replica swept (terminal: no later event can follow).
    for id in &owned {
        let events = events_of(&stack, id).await;
        assert_eq!(failed_events(&events), 1, "{id}: {:?}", events.iter().map(|e| e.r#type).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_running_execution_silent_past_its_heartbeat_timeout_fails() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let mut api = stack.api(&[("RUNCAST_SWEEP_INTERVAL", "300ms")]).await;
    let mut client = executions(&mut api, Some(&admin())).await;
    let create =
        CreateExecutionRequest { workflow_id: "etl".into(), heartbeat_timeout_seconds: 2, ..Default::default() };
    let silent = client.create_execution(create.clone()).await.expect("create").into_inner();
    assert_eq!(silent.heartbeat_timeout_seconds, 2);
    let chatty = client.create_execution(create).await.expect("create").into_inner();
    for id in [&silent.execution_id, &chatty.execution_id] {
        client.update_execution_status(start(id, "")).await.expect("starts");
    }
    // `chatty` reports progress more often than its timeout until `silent` has failed.
    let reporter = {
        let mut client = client.clone();
        let id = chatty.execution_id.clone();
        tokio::spawn(async move {
            for percent in 0.. {
                let request =
                    ReportProgressRequest { execution_id: id.clone(), percent: percent % 100, ..Default::default() };
                let _ = client.report_progress(request).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    let failed = runcast_testkit::eventually("the silent execution to fail", Duration::from_secs(30), || {
        let mut client = client.clone();
        let id = silent.execution_id.clone();
        async move {
            let execution = client.get_execution(GetExecutionRequest { execution_id: id }).await.ok()?.into_inner();
            (execution.status == i32::from(ExecutionStatus::Failed)).then_some(execution)
        }
    })
    .await
    .expect("fails");
    assert_eq!(failed.error, "no heartbeat for 2s");
    let alive = client.get_execution(GetExecutionRequest { execution_id: chatty.execution_id.clone() }).await;
    assert_eq!(alive.expect("get").into_inner().status, i32::from(ExecutionStatus::Running));
    reporter.abort();
    assert_eq!(failed_events(&events_of(&stack, &silent.execution_id).await), 1);
}
