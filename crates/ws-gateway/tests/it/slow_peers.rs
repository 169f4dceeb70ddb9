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

/// `RUNCAST_HANDSHAKE_CONCURRENCY`: a WebSocket keeps its handshake place until its first
/// subscription is live, so with a single place a client that upgrades and then says nothing
/// could hold back everyone behind it; the session gives the place back after a bound.
#[tokio::test]
async fn with_one_handshake_place_a_silent_websocket_holds_back_the_next_clients_only_briefly() {
    let world = World::start().await;
    let gateway = world.gateway(&[("handshake-concurrency", "1")]).await;
    let _silent = gateway.connect(&token("acme", "mallory", 600)).await;
    for user in ["alice", "bob"] {
        let connected = tokio::time::timeout(Duration::from_secs(15), async {
            let mut client = gateway.connect(&token("acme", user, 600)).await;
            let (subscribed, _) =
                client.subscribe(serde_json::json!({"type": "subscribe", "channel": "executions"})).await;
            (client, subscribed)
        })
        .await;
        let (_client, subscribed) =
            connected.unwrap_or_else(|_| panic!("{user} is never admitted behind a silent peer"));
        assert_eq!(subscribed["channel"], "executions", "{subscribed}");
    }
}
