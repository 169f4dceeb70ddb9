//! SIGTERM: every client receives `reconnect`, the process exits within the drain timeout.

use crate::helpers::*;
use runcast_testkit::ServiceProcess;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn sigterm_sends_reconnect_to_every_client_and_exits_within_the_grace_period() {
    let world = World::start().await;
    let nats_url = world.infra.nats.url();
    let mut process = ServiceProcess::spawn(
        "ws-gateway",
        &[
            ("NATS_URL", nats_url.as_str()),
            ("RUNCAST_STREAM_PREFIX", world.isolation.stream_prefix.as_str()),
            ("DATABASE_URL", world.isolation.database_url.as_str()),
            ("RUNCAST_JWT_SECRET", SECRET),
            ("RUNCAST_SHUTDOWN_GRACE", "3s"),
        ],
    )
    .await
    .expect("gateway process starts");
    let gateway = Gateway { addr: process.addr("http_addr").await.expect("address"), shutdown: Default::default() };
    runcast_testkit::eventually("the gateway to be ready", WAIT, || {
        let url = gateway.url("/readyz");
        async move { (reqwest::get(url).await.ok()?.status() == 200).then_some(()) }
    })
    .await
    .expect("ready");
    let token = token("acme", "alice", 600);
    let mut ws = gateway.connect(&token).await;
    ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let mut sse =
        SseClient::connect(&gateway.url("/sse?channel=agents"), &[("Authorization", format!("Bearer {token}"))]).await;
    sse.until("subscribed").await;

    process.signal(nix::sys::signal::Signal::SIGTERM).expect("signalled");
    let reconnect = ws.until("reconnect").await;
    assert!(reconnect["timestamp"].is_string());
    assert_eq!(ws.expect_close().await, Some(1001));
    sse.until("reconnect").await;
    assert!(sse.next().await.is_none(), "the SSE stream ends");
    let status = process.wait_exit(Duration::from_secs(5)).await.expect("exits within the grace period");
    assert!(status.success(), "{status}");
}
