//! An expiring token closes the connection with 4001; `auth` with a fresh token keeps it open.

use crate::helpers::*;
use runcast_contract::v1::{EventType, ExecutionStatus};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn an_expired_token_closes_with_4001_and_a_refreshed_one_keeps_the_connection() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;

    let mut expiring = gateway.connect(&token("acme", "alice", 2)).await;
    let mut refreshed = gateway.connect(&token("acme", "alice", 2)).await;
    let expires_at = now() + 2;
    refreshed.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    refreshed.send(json!({"type": "auth", "token": token("acme", "alice", 600)})).await;
    // A token of another tenant is refused, and does not replace the current one.
    refreshed.send(json!({"type": "auth", "token": token("globex", "alice", 600), "id": "t"})).await;
    let error = refreshed.until("error").await;
    assert_eq!(error["code"], "permission_denied");
    assert_eq!(error["id"], "t");

    let error = expiring.until("error").await;
    assert_eq!(error["code"], "unauthenticated");
    assert_eq!(expiring.expect_close().await, Some(4001));

    runcast_testkit::eventually("the first token to be past its expiry", WAIT, || async {
        (now() > expires_at + 1).then_some(())
    })
    .await
    .expect("time passes");
    let offset = world
        .publish(&execution_event("acme", "e-1", "wf", EventType::ExecutionCreated, ExecutionStatus::Pending))
        .await;
    let event = refreshed.events(1).await;
    assert_eq!(event[0]["offset"], offset);
    refreshed.send(json!({"type": "ping"})).await;
    let pong = tokio::time::timeout(Duration::from_secs(5), refreshed.until("pong")).await;
    assert!(pong.is_ok(), "still open after the first token expired");
}
