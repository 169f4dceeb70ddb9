//! Slow and silent peers (DESIGN §7 `RUNCAST_HEADER_TIMEOUT`): 500 connections that never finish
//! a request are closed within the header timeout, while a WebSocket client is served meanwhile.

use crate::helpers::{World, token};
use std::time::Duration;

#[tokio::test]
async fn a_slowloris_is_disconnected_after_the_header_timeout_while_clients_are_served() {
    let world = World::start().await;
    let gateway = world.gateway(&[("header-timeout", "1s")]).await;
    let peers = runcast_testkit::slow_peers::open(gateway.addr, 500).await.expect("500 slow peers");

    let mut client = gateway.connect(&token("acme", "alice", 600)).await;
    client.send(serde_json::json!({"type": "ping", "id": "p1"})).await;
    let pong = client.next_json().await;
    assert_eq!(pong["type"], "pong", "served beside 500 slow peers: {pong}");

    let took = runcast_testkit::slow_peers::wait_all_closed(peers, Duration::from_secs(15))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    eprintln!("500 slow peers disconnected after {took:?} (header timeout 1 s)");
    client.send(serde_json::json!({"type": "ping", "id": "p2"})).await;
    assert_eq!(client.next_json().await["type"], "pong", "the WebSocket outlives the header timeout");
}
