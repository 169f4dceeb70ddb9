//! Bad input gets the documented error or close code, and the gateway keeps serving others.

use crate::helpers::*;
use futures::SinkExt;
use serde_json::json;

async fn still_serves(gateway: &Gateway) {
    let mut other = gateway.connect(&token("acme", "bob", 600)).await;
    other.send(json!({"type": "ping", "id": 1})).await;
    let pong = other.next_json().await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], 1);
}

#[tokio::test]
async fn malformed_messages_get_an_error_and_the_connection_stays_open() {
    let world = World::start().await;
    let gateway = world.gateway(&[("max-subscriptions", "2")]).await;
    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    for (message, code) in [
        ("this is not json".to_owned(), "invalid_json"),
        (json!({"type": "publish", "id": "x"}).to_string(), "unknown_type"),
        (json!({"type": "subscribe", "channel": "jobs", "id": "x"}).to_string(), "unknown_channel"),
        (json!({"type": "subscribe", "channel": "executions:a.b"}).to_string(), "unknown_channel"),
        (
            json!({"type": "subscribe", "channel": "executions", "filters": {"statuses": ["nope"]}}).to_string(),
            "invalid_filter",
        ),
        (json!({"type": "subscribe"}).to_string(), "invalid_message"),
        (json!({"type": "unsubscribe", "channel": "agents"}).to_string(), "not_subscribed"),
    ] {
        ws.send_raw(message.clone()).await;
        let error = ws.next_json().await;
        assert_eq!(error["type"], "error", "{message}: {error}");
        assert_eq!(error["code"], code, "{message}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        if message.contains("\"id\":\"x\"") {
            assert_eq!(error["id"], "x");
        }
    }
    ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    ws.send(json!({"type": "subscribe", "channel": "executions"})).await;
    assert_eq!(ws.until("error").await["code"], "already_subscribed");
    ws.subscribe(json!({"type": "subscribe", "channel": "agents"})).await;
    ws.send(json!({"type": "subscribe", "channel": "approvals", "id": 3})).await;
    let error = ws.until("error").await;
    assert_eq!(error["code"], "too_many_subscriptions");
    assert_eq!(error["id"], 3);
    ws.send(json!({"type": "unsubscribe", "channel": "agents"})).await;
    assert_eq!(ws.until("unsubscribed").await["channel"], "agents");
    ws.subscribe(json!({"type": "subscribe", "channel": "approvals"})).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.until("pong").await["type"], "pong");
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_a_flood_with_1008() {
    let world = World::start().await;
    let gateway = world.gateway(&[("max-frame-bytes", "1024"), ("max-messages-per-second", "5")]).await;

    let mut big = gateway.connect(&token("acme", "alice", 600)).await;
    big.send_raw(format!("{{\"type\":\"ping\",\"id\":\"{}\"}}", "x".repeat(2000))).await;
    assert_eq!(big.expect_close().await, Some(1009));
    still_serves(&gateway).await;

    let mut flood = gateway.connect(&token("acme", "alice", 600)).await;
    for i in 0..50 {
        if flood
            .socket
            .send(tokio_tungstenite::tungstenite::Message::text(json!({"type": "ping", "id": i}).to_string()))
            .await
            .is_err()
        {
            break;
        }
    }
    let mut rate_limited = false;
    let code = loop {
        match flood.next().await {
            Received::Json(value) => rate_limited |= value["code"] == "rate_limited",
            Received::Closed(code) => break code,
        }
    };
    assert!(rate_limited, "a rate_limited error before the close");
    assert_eq!(code, Some(1008));
    still_serves(&gateway).await;
}

#[tokio::test]
async fn upgrades_need_credentials_and_accept_the_token_query() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let refused = WsClient::try_connect(&gateway.ws_url(""), None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    let refused = WsClient::try_connect(&gateway.ws_url("?token=garbage"), None).await;
    assert!(refused.is_err());
    let mut ws = WsClient::connect(&gateway.ws_url(&format!("?token={}", token("acme", "alice", 600))), None).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await["type"], "pong");
    let sse = reqwest::get(gateway.url("/sse?channel=executions")).await.expect("answers");
    assert_eq!(sse.status(), 401);
    let sse = reqwest::get(gateway.url(&format!("/sse?channel=nope&token={}", token("acme", "a", 600))))
        .await
        .expect("answers");
    assert_eq!(sse.status(), 400);
}

#[tokio::test]
async fn a_peer_that_answers_no_ping_is_closed() {
    let world = World::start().await;
    let gateway = world.gateway(&[("ping-interval", "200ms")]).await;
    // Not reading means not answering pings (tungstenite answers them while reading).
    let mut silent = gateway.connect(&token("acme", "alice", 600)).await;
    for (what, count) in [("the peer to be counted", 1), ("the silent peer to be dropped", 0)] {
        runcast_testkit::eventually(what, WAIT, || async {
            (gateway.stats().await["connections"]["websocket"] == count).then_some(())
        })
        .await
        .expect(what);
    }
    // The close frame (1001) is behind the unanswered pings; reading those makes the client
    // answer them on a socket the server already closed, which may surface as a reset first.
    let code = silent.expect_close().await;
    assert!(matches!(code, Some(1001) | None), "closed with {code:?}");
    still_serves(&gateway).await;
}

#[tokio::test]
async fn an_api_key_authenticates_an_upgrade_and_is_scoped_to_its_tenant() {
    use sha2::Digest as _;
    let world = World::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys.json");
    let key = "rk_test_gateway_key";
    let hash = hex::encode(sha2::Sha256::digest(key.as_bytes()));
    std::fs::write(
        &keys,
        json!({"keys": [{"sha256": hash, "sub": "dashboard", "tenant": "globex", "roles": ["viewer"]}]}).to_string(),
    )
    .expect("keys file");
    let keys = keys.display().to_string();
    let gateway = world.gateway(&[("api-keys-file", keys.as_str())]).await;
    let mut ws = WsClient::connect(&gateway.ws_url(""), Some(("X-API-Key", key.to_owned()))).await;
    ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let refused = WsClient::try_connect(&gateway.ws_url(""), Some(("X-API-Key", "wrong".to_owned()))).await;
    assert!(refused.is_err());
    use runcast_contract::v1::{EventType, ExecutionStatus};
    world.publish(&execution_event("acme", "e-1", "wf", EventType::ExecutionCreated, ExecutionStatus::Pending)).await;
    let own = world
        .publish(&execution_event("globex", "g-1", "wf", EventType::ExecutionCreated, ExecutionStatus::Pending))
        .await;
    assert_eq!(ws.events(1).await[0]["offset"], own, "only its own tenant's event");
}

#[tokio::test]
async fn browsers_from_origins_not_allowed_are_refused() {
    let world = World::start().await;
    let gateway = world.gateway(&[("allowed-origins", "https://app.example")]).await;
    let bearer = format!("Bearer {}", token("acme", "alice", 600));
    let sse = |origin: &'static str| {
        reqwest::Client::new()
            .get(gateway.url("/sse?channel=executions"))
            .header("Authorization", bearer.clone())
            .header("Origin", origin)
            .send()
    };
    assert_eq!(sse("https://evil.example").await.expect("answers").status(), 403);
    assert_eq!(sse("https://app.example").await.expect("answers").status(), 200);
    let refused = WsClient::try_connect(
        &gateway.ws_url(&format!("?token={}", token("acme", "alice", 600))),
        Some(("Origin", "https://evil.example".to_owned())),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}
