//! NATS restarts under a running gateway: live delivery continues with no gap, and resume works.

use crate::helpers::*;
use runcast_contract::v1::{Event, EventType, ExecutionStatus};
use serde_json::json;

fn step(i: u32) -> Event {
    execution_event("acme", &format!("e-{i}"), "wf", EventType::StepStarted, ExecutionStatus::Running)
}

#[tokio::test]
async fn live_delivery_and_resume_survive_a_nats_restart() {
    let mut world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let token = token("acme", "alice", 600);
    let mut ws = gateway.connect(&token).await;
    ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let before = world.publish(&step(0)).await;
    assert_eq!(offsets(&ws.events(1).await), [before]);

    world.infra.nats.restart().await.expect("NATS restarts");
    // The test's own client reconnects in the background too: retry the first publish.
    let after = runcast_testkit::eventually("a publish after the restart", WAIT, || {
        let world = &world;
        async move {
            let ack =
                tokio::time::timeout(std::time::Duration::from_secs(2), world.publish_nowait(&step(1))).await.ok()?;
            tokio::time::timeout(std::time::Duration::from_secs(2), ack).await.ok()?.ok().map(|ack| ack.sequence)
        }
    })
    .await
    .expect("published after the restart");
    let more = world.publish_many((2..=20).map(step)).await;

    let mut expected = vec![after];
    expected.extend(&more);
    assert_eq!(offsets(&ws.events(expected.len()).await), expected, "no gap, no duplicate");

    let mut resumed = gateway.connect(&token).await;
    let (subscribed, replayed) =
        resumed.subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": before})).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(offsets(&replayed), expected);
}
