//! The protobuf subprotocol `runcast.v1.proto`: the same protocol in binary frames.

use crate::helpers::*;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use runcast_contract::v1::{
    EventType, ExecutionStatus, GatewayClientMessage, GatewayFilters, GatewayServerMessage, event,
};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

async fn next_binary(socket: &mut Socket) -> GatewayServerMessage {
    loop {
        let frame =
            tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").expect("open").expect("no error");
        match frame {
            tungstenite::Message::Binary(bytes) => {
                return GatewayServerMessage::decode(bytes).expect("a GatewayServerMessage");
            }
            tungstenite::Message::Text(text) => panic!("a text frame on a protobuf connection: {text}"),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn the_protobuf_subprotocol_carries_the_same_protocol_in_binary_frames() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let mut request =
        gateway.ws_url(&format!("?token={}", token("acme", "alice", 600))).into_client_request().expect("request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", "runcast.v1.proto".parse().expect("header"));
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
        Some("runcast.v1.proto")
    );

    let subscribe = GatewayClientMessage {
        r#type: "subscribe".into(),
        id: "s".into(),
        channel: "executions".into(),
        filters: Some(GatewayFilters { types: vec!["execution.started".into()], ..Default::default() }),
        ..Default::default()
    };
    socket.send(tungstenite::Message::binary(subscribe.encode_to_vec())).await.expect("sent");
    let subscribed = next_binary(&mut socket).await;
    assert_eq!((subscribed.r#type.as_str(), subscribed.id.as_str()), ("subscribed", "s"));
    assert_eq!(subscribed.channel, "executions");

    world.publish(&execution_event("acme", "e-1", "wf", EventType::ExecutionCreated, ExecutionStatus::Pending)).await;
    let offset = world
        .publish(&execution_event("acme", "e-1", "wf", EventType::ExecutionStarted, ExecutionStatus::Running))
        .await;
    let frame = next_binary(&mut socket).await;
    assert_eq!(frame.r#type, "execution.started");
    assert_eq!(frame.offset, offset);
    let event = frame.event.expect("the event");
    assert_eq!(event.offset, offset);
    assert!(matches!(event.state, Some(event::State::Execution(ref e)) if e.status == ExecutionStatus::Running as i32));

    // JSON text on a protobuf connection is refused, the connection stays.
    socket.send(tungstenite::Message::text(r#"{"type":"ping"}"#)).await.expect("sent");
    let error = next_binary(&mut socket).await;
    assert_eq!((error.r#type.as_str(), error.code.as_str()), ("error", "invalid_message"));
    let ping = GatewayClientMessage { r#type: "ping".into(), id: "p".into(), ..Default::default() };
    socket.send(tungstenite::Message::binary(ping.encode_to_vec())).await.expect("sent");
    let pong = next_binary(&mut socket).await;
    assert_eq!((pong.r#type.as_str(), pong.id.as_str()), ("pong", "p"));
}
