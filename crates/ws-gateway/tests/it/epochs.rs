//! Positions have an epoch (DESIGN §7): `subscribed` carries the stream's; a resume naming another
//! epoch, an offset beyond the stream, an offset neither the stream nor the history holds, or a gap
//! only the history could fill while PostgreSQL is down answers `recovered: false` with its
//! `reason`, replays nothing, and continues live — in JSON, protobuf and SSE alike.

use crate::helpers::*;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use runcast_contract::StreamKind;
use runcast_contract::v1::{Event, EventType, ExecutionStatus, GatewayClientMessage, GatewayServerMessage};
use runcast_runtime::config::StreamLimits;
use runcast_runtime::nats::stream_config;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// A well-formed epoch no stream of this test has.
const STALE: &str = "2020-01-01T00:00:00Z";

fn started(i: u32) -> Event {
    execution_event("acme", &format!("p-{}", i % 3), "wf", EventType::StepStarted, ExecutionStatus::Running)
}

/// Subscribes on a connection of its own and asserts the resume was not recovered for `reason`,
/// with nothing replayed. Returns the connection, live from the head.
async fn not_recovered(gateway: &Gateway, token: &str, request: Value, reason: &str, epoch: &str) -> WsClient {
    let mut ws = gateway.connect(token).await;
    let (subscribed, replayed) = ws.subscribe(request.clone()).await;
    assert_eq!(subscribed["recovered"], false, "{request} → {subscribed}");
    assert_eq!(subscribed["reason"], reason, "{request} → {subscribed}");
    assert_eq!(subscribed["replayed"], 0, "{subscribed}");
    assert_eq!(subscribed["epoch"], epoch, "{subscribed}");
    assert!(replayed.is_empty(), "nothing replayed from a wrong position: {replayed:?}");
    ws
}

async fn proto_socket(gateway: &Gateway, token: &str) -> Socket {
    let mut request = gateway.ws_url(&format!("?token={token}")).into_client_request().expect("request");
    request.headers_mut().insert("Sec-WebSocket-Protocol", "runcast.v1.proto".parse().expect("header"));
    tokio_tungstenite::connect_async(request).await.expect("upgrade").0
}

async fn next_binary(socket: &mut Socket) -> GatewayServerMessage {
    loop {
        let frame =
            tokio::time::timeout(WAIT, socket.next()).await.expect("a frame in time").expect("open").expect("no error");
        if let tungstenite::Message::Binary(bytes) = frame {
            return GatewayServerMessage::decode(bytes).expect("a GatewayServerMessage");
        }
    }
}

#[tokio::test]
async fn a_resume_from_another_epoch_or_an_offset_nobody_holds_is_not_recovered_and_says_why() {
    let mut world = World::start().await;
    let pool = sqlx::PgPool::connect(&world.isolation.database_url).await.expect("database");
    runcast_store::schema::migrate(&pool).await.expect("schema");
    // The stream keeps three events; the history stays empty (no persister).
    let gateway = world.gateway(&[("max-messages", "3")]).await;
    let token = token("acme", "alice", 600);

    let mut ws = gateway.connect(&token).await;
    let (subscribed, _) = ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let epoch = subscribed["epoch"].as_str().expect("subscribed carries the epoch").to_owned();
    assert!(chrono::DateTime::parse_from_rfc3339(&epoch).is_ok(), "an RFC 3339 time: {epoch}");
    assert_eq!(gateway.stats().await["streams"]["EXECUTIONS"]["epoch"], epoch.as_str(), "/ws/stats shows it too");
    let first = world.publish_many((0..2).map(started)).await;
    assert_eq!(offsets(&ws.events(2).await), first);

    // The right epoch resumes as before.
    let mut resumed = gateway.connect(&token).await;
    let (subscribed, replayed) = resumed
        .subscribe(
            json!({"type": "subscribe", "channel": "executions", "since_offset": first[0], "since_epoch": epoch}),
        )
        .await;
    assert_eq!((subscribed["recovered"].clone(), subscribed.get("reason")), (json!(true), None), "{subscribed}");
    assert_eq!(offsets(&replayed), first[1..]);

    // Push the first events out of the three-event stream (too fast for a live feed to see them
    // all: the stream drops them as it goes, which is fine here).
    let later = world.publish_many((2..8).map(started)).await;
    let last = later.last().copied().unwrap_or_default();
    runcast_testkit::eventually("the gateway's live feed to pass the pushed events", WAIT, || async {
        (gateway.stats().await["streams"]["EXECUTIONS"]["head"].as_u64() >= Some(last)).then_some(())
    })
    .await
    .expect("live feed at the head");

    // Another epoch: the offset means nothing here.
    let mut stale = not_recovered(
        &gateway,
        &token,
        json!({"type": "subscribe", "channel": "workflows:wf", "since_offset": 0, "since_epoch": STALE}),
        "epoch_changed",
        &epoch,
    )
    .await;
    // Beyond the end of the stream: a position of an earlier incarnation of it.
    not_recovered(
        &gateway,
        &token,
        json!({"type": "subscribe", "channel": "approvals", "since_offset": 1_000_000}),
        "epoch_changed",
        &epoch,
    )
    .await;
    // Aged out of the stream and not in the history.
    let mut aged = not_recovered(
        &gateway,
        &token,
        json!({"type": "subscribe", "channel": "executions", "since_offset": first[0], "since_epoch": epoch}),
        "too_old",
        &epoch,
    )
    .await;
    // Each of those continues live from the head.
    let live = world.publish(&started(9)).await;
    for ws in [&mut stale, &mut aged] {
        let next = ws.next_json().await;
        assert_eq!(next["offset"], live, "only live events after the refusal: {next} (published {later:?})");
    }

    // Protobuf frames carry the same fields.
    let mut socket = proto_socket(&gateway, &token).await;
    let subscribe = GatewayClientMessage {
        r#type: "subscribe".into(),
        channel: "executions".into(),
        since_offset: Some(first[0]),
        since_epoch: STALE.into(),
        ..Default::default()
    };
    socket.send(tungstenite::Message::binary(subscribe.encode_to_vec())).await.expect("sent");
    let subscribed = next_binary(&mut socket).await;
    assert_eq!(subscribed.r#type, "subscribed", "nothing before it: {subscribed:?}");
    assert_eq!(subscribed.recovered, Some(false));
    assert_eq!((subscribed.reason.as_str(), subscribed.epoch.as_str()), ("epoch_changed", epoch.as_str()));
    let live = world.publish(&started(10)).await;
    let next = next_binary(&mut socket).await;
    assert_eq!((next.r#type.as_str(), next.offset), ("step.started", live));

    // SSE: `since_epoch` beside Last-Event-ID; the reason is in the `subscribed` event's data.
    for (since_epoch, reason) in [(STALE, "epoch_changed"), (epoch.as_str(), "too_old")] {
        let mut sse = SseClient::connect(
            &gateway.url(&format!("/sse?channel=executions&since_epoch={since_epoch}")),
            &[("Authorization", format!("Bearer {token}")), ("Last-Event-ID", first[0].to_string())],
        )
        .await;
        let record = sse.next().await.expect("open");
        assert_eq!(record.event.as_deref(), Some("subscribed"), "nothing replayed before it: {record:?}");
        assert_eq!(record.data["recovered"], false, "{record:?}");
        assert_eq!(record.data["reason"], reason, "{record:?}");
        assert_eq!(record.data["epoch"], epoch.as_str(), "{record:?}");
    }
    let refused = reqwest::Client::new()
        .get(gateway.url("/sse?channel=executions&since_epoch=yesterday"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 400, "a malformed since_epoch is refused");

    // PostgreSQL down: a gap only the history could fill is `unavailable`, not an error.
    world.infra.postgres.stop();
    not_recovered(
        &gateway,
        &token,
        json!({"type": "subscribe", "channel": "executions", "since_offset": first[0], "since_epoch": epoch}),
        "unavailable",
        &epoch,
    )
    .await;
}

#[tokio::test]
async fn a_stream_re_created_under_live_clients_resyncs_them_from_offset_zero_of_the_new_epoch() {
    let world = World::start().await;
    let gateway = world.gateway(&[]).await;
    let token = token("acme", "alice", 600);
    let mut ws = gateway.connect(&token).await;
    let (subscribed, _) = ws.subscribe(json!({"type": "subscribe", "channel": "executions"})).await;
    let old = subscribed["epoch"].as_str().expect("epoch").to_owned();
    let before = world.publish_many((0..3).map(started)).await;
    assert_eq!(offsets(&ws.events(3).await), before);

    // An operator deletes the stream; a service provisions it again: offsets start over.
    let name = world.topology.stream_name(StreamKind::Executions);
    world.jetstream.delete_stream(&name).await.expect("stream deleted");
    let limits = StreamLimits {
        replicas: 1,
        max_age: Duration::from_secs(3600),
        max_bytes: -1,
        max_messages: -1,
        duplicate_window: Duration::from_secs(60),
    };
    world
        .jetstream
        .create_stream(stream_config(&world.topology, StreamKind::Executions, &limits))
        .await
        .expect("stream re-created");
    let first = world.publish(&started(10)).await;
    assert_eq!(first, 1, "a new stream counts from 1");

    // The live client is told to start over in the new epoch, not fed offsets it would take for
    // duplicates.
    let resync = ws.until("resync").await;
    assert_eq!((&resync["channel"], &resync["offset"]), (&json!("executions"), &json!(0)), "{resync}");
    let new = resync["epoch"].as_str().expect("resync carries the epoch").to_owned();
    assert_ne!(new, old, "{resync}");
    let (subscribed, replayed) = ws
        .subscribe(json!({"type": "subscribe", "channel": "executions", "since_offset": 0, "since_epoch": new}))
        .await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    assert_eq!(offsets(&replayed), [first]);
    let live = world.publish(&started(11)).await;
    assert_eq!(ws.next_json().await["offset"], live);

    // A resume that still counts in the old epoch is refused for what it is.
    not_recovered(
        &gateway,
        &token,
        json!({"type": "subscribe", "channel": "executions", "since_offset": before[0], "since_epoch": old}),
        "epoch_changed",
        &new,
    )
    .await;
}
