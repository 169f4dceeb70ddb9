//! The gateway's side of the one error contract (DESIGN §7): unknown SSE parameters and filter
//! values are 400s naming them and what is accepted, a non-ASCII `Last-Event-ID` is a 400, unknown
//! routes are JSON 404s, and a WebSocket frame beyond the socket's limit closes with 1009.

use crate::helpers::*;
use serde_json::{Value, json};

async fn sse_error(gateway: &Gateway, query: &str, headers: &[(&str, reqwest::header::HeaderValue)]) -> (u16, Value) {
    let mut request =
        reqwest::Client::new().get(gateway.url(&format!("/sse?{query}"))).bearer_auth(token("acme", "alice", 600));
    for (name, value) in headers {
        request = request.header(*name, value.clone());
    }
    let response = request.send().await.expect("answers");
    let status = response.status().as_u16();
    assert_eq!(
        response.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{query}"
    );
    (status, response.json().await.expect("a JSON error"))
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn sse_refuses_unknown_parameters_and_values_naming_them_and_the_accepted_ones() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;

    // `status` is not a parameter (it is `statuses`): never a silent match-all.
    let (status, body) = sse_error(&gateway, "channel=executions&status=runing", &[]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_message", "{body}");
    assert!(message(&body).contains("'status'") && message(&body).contains("statuses"), "{body}");

    let (status, body) = sse_error(&gateway, "channel=executions&statuses=runing", &[]).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_filter")), "{body}");
    assert!(message(&body).contains("'runing'") && message(&body).contains("running"), "{body}");

    let (status, body) = sse_error(&gateway, "channel=executions&types=execution.begun", &[]).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_filter")), "{body}");
    assert!(message(&body).contains("execution.started"), "{body}");

    let (status, body) = sse_error(&gateway, "channel=executions&snapshot=maybe", &[]).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_message")), "{body}");

    let (status, body) = sse_error(&gateway, "channel=executions&channel=agents", &[]).await;
    assert_eq!(status, 400, "a repeated parameter is refused: {body}");

    let non_ascii = reqwest::header::HeaderValue::from_bytes("1é".as_bytes()).expect("obs-text is a valid header");
    let (status, body) = sse_error(&gateway, "channel=executions", &[("Last-Event-ID", non_ascii)]).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!("invalid_message")), "{body}");
    assert!(message(&body).contains("Last-Event-ID"), "{body}");

    // What is accepted still works.
    let ok = reqwest::Client::new()
        .get(gateway.url("/sse?channel=executions&statuses=running,failed&types=execution.started&since_epoch="))
        .bearer_auth(token("acme", "alice", 600))
        .header("Last-Event-ID", "0")
        .send()
        .await
        .expect("answers");
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn websocket_filters_with_unknown_values_are_errors_not_match_all() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    for filters in
        [json!({"statuses": ["runing"]}), json!({"types": ["execution.begun"]}), json!({"status": ["running"]})]
    {
        ws.send(json!({"type": "subscribe", "channel": "executions", "filters": filters, "id": "f"})).await;
        let error = ws.until("error").await;
        assert_eq!(error["id"], "f", "{error}");
        assert!(["invalid_filter", "invalid_message"].contains(&error["code"].as_str().unwrap_or_default()), "{error}");
    }
    ws.send(json!({"type": "subscribe", "channel": "executions", "filters": {"statuses": ["runing"]}})).await;
    let error = ws.until("error").await;
    assert_eq!(error["code"], "invalid_filter");
    assert!(error["message"].as_str().is_some_and(|m| m.contains("runing") && m.contains("running")), "{error}");
    // Nothing was subscribed by the refused requests.
    assert_eq!(gateway.stats().await["subscriptions_total"], 0);
}

#[tokio::test]
async fn a_frame_beyond_the_socket_limit_closes_with_1009() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let mut big = gateway.connect(&token("acme", "alice", 600)).await;
    // 300 KiB: beyond RUNCAST_WS_MAX_FRAME_BYTES and beyond what the socket reads at all (256 KiB).
    big.send_raw(format!("{{\"type\":\"ping\",\"id\":\"{}\"}}", "x".repeat(300 * 1024))).await;
    assert_eq!(big.expect_close().await, Some(1009));
    let mut other = gateway.connect(&token("acme", "bob", 600)).await;
    other.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(other.until("pong").await["id"], 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_the_json_error_shape() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    for path in ["/nope", "/ws/nope", "/api/v1/executions", "/missing.js"] {
        let response = reqwest::get(gateway.url(path)).await.expect("answers");
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "NOT_FOUND", "{path}: {body}");
    }
    let response = reqwest::Client::new().post(gateway.url("/ws/stats")).send().await.expect("answers");
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "METHOD_NOT_ALLOWED", "{body}");
}

#[tokio::test]
async fn the_dashboard_config_lists_the_allowed_origins() {
    let world = World::start().await;
    let gateway = world.gateway(&[("dashboard-allowed-origins", "https://a.example, https://b.example")]).await;
    let config: Value = reqwest::get(gateway.url("/config.json")).await.expect("answers").json().await.expect("JSON");
    assert_eq!(config["allowed_origins"], json!(["https://a.example", "https://b.example"]));
}

#[tokio::test]
async fn websocket_upgrades_with_unknown_parameters_or_without_a_handshake_get_json_errors() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let bearer = Some(("Authorization", format!("Bearer {}", token("acme", "alice", 600))));
    match WsClient::try_connect(&gateway.ws_url("?tokn=abc"), bearer).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).expect("JSON error");
            assert_eq!(body["error"]["code"], "invalid_message", "{body}");
            assert!(message(&body).contains("'tokn'"), "{body}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
    // A plain GET of /ws is not a handshake.
    let response = reqwest::get(gateway.url("/ws")).await.expect("answers");
    assert!(response.status().is_client_error(), "{}", response.status());
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], "NOT_A_WEBSOCKET_UPGRADE", "{body}");
    // The token query still works.
    let mut ws = WsClient::connect(&gateway.ws_url(&format!("?token={}", token("acme", "alice", 600))), None).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.until("pong").await["type"], "pong");
}

/// The gateway writes its frames itself: a client's ping gets its payload back as a pong, and a
/// client's close gets a close frame before the socket ends.
#[tokio::test]
async fn a_websocket_ping_is_answered_with_its_payload_and_a_close_with_a_close_frame() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    ws.socket.send(Message::Ping(b"are you there?".to_vec().into())).await.expect("sent");
    let pong = loop {
        match tokio::time::timeout(WAIT, ws.socket.next()).await.expect("answered in time") {
            Some(Ok(Message::Pong(payload))) => break payload,
            Some(Ok(Message::Ping(_) | Message::Text(_))) => continue,
            other => panic!("expected a pong, got {other:?}"),
        }
    };
    assert_eq!(&pong[..], b"are you there?");
    // The session still works after it.
    ws.send(json!({"type": "ping", "id": "after"})).await;
    assert_eq!(ws.until("pong").await["id"], "after");
    ws.socket.send(Message::Close(None)).await.expect("close sent");
    let reply = loop {
        match tokio::time::timeout(WAIT, ws.socket.next()).await.expect("answered in time") {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(reply.map(|frame| u16::from(frame.code)), Some(1001), "the session's own close frame");
}

/// A frame that breaks the WebSocket protocol closes the connection with 1002, and says so.
#[tokio::test]
async fn a_frame_that_breaks_the_websocket_protocol_closes_with_1002() {
    use tokio::io::AsyncWriteExt;
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let mut ws = gateway.connect(&token("acme", "alice", 600)).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.socket.get_mut() else { panic!("a plain TCP connection") };
    // A masked, empty text frame with RSV1 set, though no extension was negotiated.
    tcp.write_all(&[0xC1, 0x80, 1, 2, 3, 4]).await.expect("written");
    assert_eq!(ws.expect_close().await, Some(1002));
}
