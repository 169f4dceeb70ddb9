//! The WebSocket transport at `/ws`: authentication and origin check at upgrade, socket limits,
//! and the write-only half that empties the connection's queue — every frame queued at a wake-up
//! is fed, then flushed once — plus the ping keepalive that closes dead peers.

use crate::gateway::{Gateway, Transport};
use crate::outbound::{Frame, FrameKind, Outbound};
use crate::protocol::{CloseCode, JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL, Protocol};
use crate::session::{Inbound, Session};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use runcast_runtime::auth::Principal;
use serde::Deserialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Frames written per flush at most, so one busy connection does not monopolize its task.
const WRITE_BATCH: usize = 256;

#[derive(Debug, Deserialize)]
pub struct UpgradeQuery {
    token: Option<String>,
}

pub async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    Query(query): Query<UpgradeQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let principal = match gw.admit(&headers, query.token.as_deref()) {
        Ok(principal) => principal,
        Err(refusal) => return *refusal,
    };
    let limits = &gw.limits;
    // tungstenite's own limit sits well above ours, so an oversized frame reaches the session,
    // which closes with 1009 instead of the socket just failing.
    let hard_limit = (limits.max_frame_bytes * 4).max(64 * 1024);
    let tracker = gw.tasks.clone();
    let ws = ws.protocols([JSON_SUBPROTOCOL, PROTO_SUBPROTOCOL]);
    let protocol = Protocol::from_subprotocol(ws.selected_protocol().and_then(|v| v.to_str().ok()));
    ws.read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| tracker.track_future(serve(gw, socket, protocol, principal)))
        .into_response()
}

async fn serve(gw: Arc<Gateway>, socket: WebSocket, protocol: Protocol, principal: Principal) {
    let (sink, stream) = socket.split();
    let outbound = Outbound::new(gw.limits.queue_capacity);
    let closed = CancellationToken::new();
    let started = Instant::now();
    let last_seen = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_loop(
        sink,
        outbound.clone(),
        closed.clone(),
        protocol,
        gw.limits.clone(),
        started,
        last_seen.clone(),
    ));
    let seen = last_seen.clone();
    let inbound = stream.take_while(|message| std::future::ready(message.is_ok())).filter_map(move |message| {
        seen.store(millis_since(started), Ordering::Relaxed);
        std::future::ready(match message {
            Ok(Message::Text(text)) => Some(Inbound::Text(text.into())),
            Ok(Message::Binary(bytes)) => Some(Inbound::Binary(bytes)),
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(Inbound::Alive),
            Ok(Message::Close(_)) | Err(_) => None,
        })
    });
    // A peer's close frame ends the stream (tungstenite answers it), which ends the session.
    let inbound = Box::pin(inbound);
    Session::new(gw.clone(), Transport::WebSocket, protocol, principal, outbound).run(inbound, closed.clone()).await;
    // Let the writer deliver what the session queued last (reconnect, error, close frame).
    if tokio::time::timeout(gw.limits.write_timeout, writer).await.is_err() {
        tracing::debug!("writer did not finish in time");
    }
    closed.cancel();
}

fn millis_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn to_message(frame: Frame, protocol: Protocol) -> Option<Message> {
    match frame.kind {
        FrameKind::Event(_) | FrameKind::Control { .. } => match protocol {
            Protocol::Json => Utf8Bytes::try_from(frame.bytes).ok().map(Message::Text),
            Protocol::Proto => Some(Message::Binary(frame.bytes)),
        },
        FrameKind::Close { code, reason } => {
            Some(Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) })))
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbound: Arc<Outbound>,
    closed: CancellationToken,
    protocol: Protocol,
    limits: crate::gateway::Limits,
    started: Instant,
    last_seen: Arc<AtomicU64>,
) {
    let timeout = limits.write_timeout;
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let dead_after = u64::try_from((limits.ping_interval * 2).as_millis()).unwrap_or(u64::MAX);
    // Grown on demand and released after a burst: an idle connection holds no batch memory.
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            _ = closed.cancelled() => return,
            _ = outbound.ready() => {}
            _ = ping.tick() => {
                let idle = millis_since(started).saturating_sub(last_seen.load(Ordering::Relaxed));
                if idle > dead_after {
                    tracing::info!(idle_ms = idle, "peer does not answer pings; closing");
                    outbound.close(CloseCode::GoingAway.code(), "ping timeout");
                } else if !send(&mut sink, Message::Ping(Default::default()), timeout).await {
                    closed.cancel();
                    return;
                }
            }
        }
        loop {
            outbound.pop_batch(WRITE_BATCH, &mut batch);
            if batch.is_empty() {
                if batch.capacity() > 16 {
                    batch = Vec::new();
                }
                break;
            }
            let mut events = 0u64;
            for frame in batch.drain(..) {
                if let FrameKind::Event(meta) = &frame.kind {
                    events += 1;
                    if let Some(received) = meta.received {
                        metrics::histogram!("runcast_ws_delivery_latency_seconds")
                            .record(received.elapsed().as_secs_f64());
                    }
                }
                let is_close = matches!(frame.kind, FrameKind::Close { .. });
                let Some(message) = to_message(frame, protocol) else {
                    continue;
                };
                let fed = tokio::time::timeout(timeout, sink.feed(message)).await;
                if !matches!(fed, Ok(Ok(()))) || is_close {
                    let _ = tokio::time::timeout(timeout, sink.flush()).await;
                    closed.cancel();
                    return;
                }
            }
            metrics::counter!("runcast_ws_messages_out_total", "transport" => "websocket").increment(events);
            if !matches!(tokio::time::timeout(timeout, sink.flush()).await, Ok(Ok(()))) {
                tracing::debug!("flush failed or timed out; dropping the connection");
                closed.cancel();
                return;
            }
        }
    }
}

async fn send(sink: &mut SplitSink<WebSocket, Message>, message: Message, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, sink.send(message)).await, Ok(Ok(())))
}
