//! Sweepers on two replicas: exactly one `agent.offline`, lease handover when its holder dies,
//! and exactly one `approval.expired`.

use crate::support::{Stack, admin, agents, executions};
use runcast_contract::StreamKind;
use runcast_contract::v1::*;
use std::time::Duration;

/// Types of every event on a subject of `kind`.
async fn event_types(stack: &Stack, kind: StreamKind, entity: &str) -> Vec<i32> {
    crate::support::events_on(stack, kind, entity).await.iter().map(|event| event.r#type).collect()
}

fn count(types: &[i32], wanted: EventType) -> usize {
    types.iter().filter(|t| **t == i32::from(wanted)).count()
}

#[tokio::test]
async fn a_silent_agent_goes_offline_exactly_once_and_the_lease_moves_when_its_holder_dies() {
    let stack = Stack::start().await;
    let (mut first, mut second) = tokio::join!(stack.api(&[]), stack.api(&[]));
    let mut client = agents(&mut first, Some(&admin())).await;
    let beat =
        |id: &str| HeartbeatRequest { agent_id: id.into(), cpu_percent: 5.0, timeout_seconds: 1, ..Default::default() };
    client.heartbeat(beat("worker-1")).await.expect("online");
    client.heartbeat(beat("worker-1")).await.expect("heartbeat");

    let offline = runcast_testkit::eventually("agent.offline for worker-1", Duration::from_secs(20), || async {
        let types = event_types(&stack, StreamKind::Agents, "worker-1").await;
        (count(&types, EventType::AgentOffline) > 0).then_some(types)
    })
    .await
    .expect("went offline");
    assert_eq!(offline[..2], [i32::from(EventType::AgentOnline), i32::from(EventType::AgentHeartbeat)]);

    // Find the lease holder, kill it; the survivor must take over and sweep the next agent.
    let holder_is_first = first.recent_log().contains("this replica now runs the sweepers");
    let (mut dead, survivor) = if holder_is_first { (first, &mut second) } else { (second, &mut first) };
    dead.signal(nix::sys::signal::Signal::SIGKILL).expect("kill");
    dead.wait_exit(Duration::from_secs(5)).await.expect("dead");
    let mut client = agents(survivor, Some(&admin())).await;
    client.heartbeat(beat("worker-2")).await.expect("online");
    runcast_testkit::eventually("agent.offline for worker-2 from the survivor", Duration::from_secs(30), || async {
        let types = event_types(&stack, StreamKind::Agents, "worker-2").await;
        (count(&types, EventType::AgentOffline) > 0).then_some(())
    })
    .await
    .expect("the lease moved");

    // Still exactly one offline for worker-1, however many sweeps ran since.
    let types = event_types(&stack, StreamKind::Agents, "worker-1").await;
    assert_eq!(count(&types, EventType::AgentOffline), 1, "{types:?}");
    // A heartbeat after offline brings it back online.
    client.heartbeat(beat("worker-1")).await.expect("back");
    let types = event_types(&stack, StreamKind::Agents, "worker-1").await;
    assert_eq!(types.last(), Some(&i32::from(EventType::AgentOnline)));
}

#[tokio::test]
async fn an_approval_past_its_deadline_expires_exactly_once() {
    let stack = Stack::start().await;
    let _persister = stack.persister().await;
    let (mut first, _second) = tokio::join!(stack.api(&[]), stack.api(&[]));
    let mut client = executions(&mut first, Some(&admin())).await;
    let id = crate::support::create(&mut client, "wf").await;
    client
        .update_execution_status(UpdateExecutionStatusRequest {
            execution_id: id.clone(),
            status: ExecutionStatus::Running.into(),
            ..Default::default()
        })
        .await
        .expect("run");
    let deadline = runcast_contract::json::from_datetime(chrono::Utc::now() + chrono::Duration::seconds(1));
    let blocked = client
        .request_approval(RequestApprovalRequest {
            execution_id: id.clone(),
            approval_id: "deploy".into(),
            reason: "prod".into(),
            deadline: Some(deadline),
            ..Default::default()
        })
        .await
        .expect("requested")
        .into_inner();
    assert_eq!(blocked.status, i32::from(ExecutionStatus::Blocked));

    let failed = runcast_testkit::eventually("approval.expired", Duration::from_secs(30), || {
        let mut client = client.clone();
        let id = id.clone();
        async move {
            let execution = client.get_execution(GetExecutionRequest { execution_id: id }).await.ok()?.into_inner();
            (execution.status == i32::from(ExecutionStatus::Failed)).then_some(execution)
        }
    })
    .await
    .expect("expired");
    assert_eq!(failed.approvals[0].status, i32::from(ApprovalStatus::Expired));
    let types = event_types(&stack, StreamKind::Executions, &id).await;
    assert_eq!(count(&types, EventType::ApprovalExpired), 1, "{types:?}");
}
