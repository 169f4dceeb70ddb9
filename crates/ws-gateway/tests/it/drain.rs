//! SIGTERM: every client receives `reconnect`, the process exits within the drain timeout.

use crate::helpers::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn sigterm_sends_reconnect_to_every_client_and_exits_within_the_grace_period() {
    let world = World::start().await;
    let (mut process, gateway) = world.gateway_process(&[("RUNCAST_SHUTDOWN_GRACE", "3s")]).await;
    let token = token("acme", "alice", 600);
    let mut ws = gateway.connect(&token).await;
    ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let mut sse = gateway.sse("agents", &token).await;
    let mut gzip = gateway.sse_accepting("agents", &token, Some("gzip")).await;
    assert!(gzip.is_gzip());

    process.signal(nix::sys::signal::Signal::SIGTERM).expect("signalled");
    let reconnect = ws.until("reconnect").await;
    assert!(reconnect["timestamp"].is_string());
    assert_eq!(ws.expect_close().await, Some(1001));
    sse.until("reconnect").await;
    assert!(sse.next().await.is_none(), "the SSE stream ends");
    gzip.until("reconnect").await;
    assert!(gzip.next().await.is_none(), "the compressed one too");
    assert!(gzip.gzip_ended_whole(), "with its final block and a trailer whose CRC checks out");
    let status = process.wait_exit(Duration::from_secs(5)).await.expect("exits within the grace period");
    assert!(status.success(), "{status}");
}
