//! `event-persister rebuild` recomputes exactly the read model the live path wrote.

use crate::support::{self, WAIT, World};
use runcast_contract::StreamKind;
use runcast_contract::v1::AgentStatus;
use runcast_testkit::{ServiceProcess, eventually};
use std::time::Duration;

#[tokio::test]
async fn rebuild_reproduces_the_live_read_model_exactly() {
    let world = World::start().await;
    let persister = world.persister(&[]).await;

    let mut events = support::load(&world, 100, 8);
    for agent in ["agent-1", "agent-2"] {
        let subject = world.subject(StreamKind::Agents, "acme", agent);
        for version in 1..=3 {
            let status = if version == 3 { AgentStatus::Busy } else { AgentStatus::Online };
            events.push((subject.clone(), support::agent_event("acme", agent, version, status)));
        }
    }
    let logs = world.subject(StreamKind::Logs, "acme", "exec-1");
    events.push((logs.clone(), support::log_event("acme", "exec-1", 1, 3)));
    events.push((logs, support::log_event("acme", "exec-1", 4, 3)));
    let published = world.publish(events).await;
    world.wait_for_history(800 + 6 + 2).await;
    eventually("the live read model", WAIT, || async {
        (world.executions().await == support::expected_executions(&published)).then_some(())
    })
    .await
    .expect("live path done");
    let agents: Vec<(String, String, i64, Vec<String>)> =
        sqlx::query_as("SELECT agent_id, status, version, running_execution_ids FROM agents ORDER BY agent_id")
            .fetch_all(&world.pool)
            .await
            .expect("agents");
    assert_eq!(agents.len(), 2);
    assert_eq!(agents[0], ("agent-1".to_owned(), "busy".to_owned(), 3, vec!["exec-1".to_owned(), "exec-2".to_owned()]));
    let live = support::read_model_snapshot(&world.pool).await;
    assert_eq!(live.len(), 100 + 100 + 2 + 6, "executions, approvals, agents, log lines");

    // Damage it in every way: a row ahead of the history, a missing row, lost tables.
    for damage in [
        "UPDATE executions SET status = 'bogus', version = version + 100 WHERE execution_id = 'exec-1'",
        "DELETE FROM executions WHERE execution_id = 'exec-2'",
        "DELETE FROM agents",
        "DELETE FROM log_lines",
        "UPDATE approvals SET status = 'denied'",
    ] {
        sqlx::query(damage).execute(&world.pool).await.expect("damage");
    }
    assert_ne!(support::read_model_snapshot(&world.pool).await, live);
    drop(persister);

    let mut rebuild = ServiceProcess::run(
        "event-persister",
        &["rebuild", "--reset", "--page-size", "97"],
        &[("DATABASE_URL", world.isolation.database_url.as_str())],
    )
    .await
    .expect("runs");
    let status = rebuild.wait_exit(Duration::from_secs(60)).await.expect("exits");
    assert!(status.success(), "rebuild failed:\n{}", rebuild.recent_log());
    assert_eq!(support::read_model_snapshot(&world.pool).await, live);
}
