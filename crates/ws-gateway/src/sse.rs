//! The SSE transport at `/sse`: one subscription per request, given by query parameters, resumed
//! by `Last-Event-ID` (header, or `last_event_id` query). The write-only half turns queued frames
//! into `id:` (offset) / `event:` (type) / `data:` records, one chunk per wake-up, with a comment
//! line heartbeat. Everything else is the same [`Session`] the WebSocket uses.

use crate::channel::Channel;
use crate::filter::Filters;
use crate::gateway::{Gateway, Transport};
use crate::outbound::{FrameKind, Outbound};
use crate::protocol::{ErrorCode, Protocol, SubscribeRequest};
use crate::session::{Inbound, Session};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use runcast_runtime::auth::json_error;
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use tokio_util::sync::{CancellationToken, DropGuard};

const WRITE_BATCH: usize = 256;

#[derive(Debug, Default, Deserialize)]
pub struct SseQuery {
    channel: Option<String>,
    workflow_ids: Option<String>,
    execution_ids: Option<String>,
    statuses: Option<String>,
    types: Option<String>,
    last_event_id: Option<String>,
    snapshot: Option<bool>,
    token: Option<String>,
}

fn bad_request(code: ErrorCode, message: &str) -> Response {
    json_error(StatusCode::BAD_REQUEST, code.as_str(), message)
}

pub async fn stream(State(gw): State<Arc<Gateway>>, Query(query): Query<SseQuery>, headers: HeaderMap) -> Response {
    let principal = match gw.admit(&headers, query.token.as_deref()) {
        Ok(principal) => principal,
        Err(refusal) => return *refusal,
    };
    let Some(channel) = query.channel.as_deref() else {
        return bad_request(ErrorCode::InvalidMessage, "the `channel` query parameter is required");
    };
    let channel = match Channel::parse(channel) {
        Ok(channel) => channel,
        Err(err) => return bad_request(ErrorCode::UnknownChannel, &err.0),
    };
    let filters = match Filters::from_query(
        query.workflow_ids.as_deref(),
        query.execution_ids.as_deref(),
        query.statuses.as_deref(),
        query.types.as_deref(),
    ) {
        Ok(filters) => filters,
        Err(err) => return bad_request(ErrorCode::InvalidFilter, &err.0),
    };
    let last_event_id =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned).or(query.last_event_id);
    let since_offset = match last_event_id.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => match text.parse::<u64>() {
            Ok(offset) => Some(offset),
            Err(_) => {
                return bad_request(
                    ErrorCode::InvalidMessage,
                    "Last-Event-ID must be an offset (a non-negative integer)",
                );
            }
        },
    };

    let outbound = Outbound::new(gw.limits.queue_capacity);
    let mut session = Session::new(gw.clone(), Transport::Sse, Protocol::Json, principal, outbound.clone());
    if let Err(err) = session.subscribe(SubscribeRequest {
        channel,
        filters,
        since_offset,
        snapshot: query.snapshot.unwrap_or(false),
        id: None,
    }) {
        let status = match err.code {
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        return json_error(status, err.code.as_str(), &err.message);
    }
    let closed = CancellationToken::new();
    gw.tasks.spawn(session.run(Box::pin(futures::stream::pending::<Inbound>()), closed.clone()));
    let body = Body::from_stream(records(outbound, closed.drop_guard(), gw.limits.sse_heartbeat));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct Writer {
    outbound: Arc<Outbound>,
    /// Ends the session when the client goes away (the body is dropped).
    _closed: DropGuard,
    heartbeat: tokio::time::Interval,
    done: bool,
}

/// The body: everything queued at each wake-up as one chunk, or a heartbeat comment when idle.
fn records(
    outbound: Arc<Outbound>,
    closed: DropGuard,
    heartbeat: std::time::Duration,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let mut interval = tokio::time::interval(heartbeat);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.reset();
    let writer = Writer { outbound, _closed: closed, heartbeat: interval, done: false };
    futures::stream::unfold(writer, |mut writer| async move {
        if writer.done {
            return None;
        }
        loop {
            if writer.outbound.has_frames() {
                let chunk = writer.drain();
                return Some((Ok(chunk), writer));
            }
            tokio::select! {
                _ = writer.outbound.ready() => {}
                _ = writer.heartbeat.tick() => {
                    return Some((Ok(Bytes::from_static(b": heartbeat\n\n")), writer));
                }
            }
        }
    })
}

impl Writer {
    fn drain(&mut self) -> Bytes {
        let mut frames = Vec::with_capacity(WRITE_BATCH);
        self.outbound.pop_batch(WRITE_BATCH, &mut frames);
        let size: usize = frames.iter().map(|f| f.bytes.len() + 64).sum();
        let mut chunk = BytesMut::with_capacity(size);
        let mut events = 0u64;
        for frame in frames {
            match &frame.kind {
                FrameKind::Event(meta) => {
                    events += 1;
                    if let Some(received) = meta.received {
                        metrics::histogram!("runcast_ws_delivery_latency_seconds")
                            .record(received.elapsed().as_secs_f64());
                    }
                    chunk.put_slice(format!("id: {}\nevent: {}\ndata: ", meta.offset, meta.event_type).as_bytes());
                }
                FrameKind::Control { kind } => {
                    chunk.put_slice(format!("event: {kind}\ndata: ").as_bytes());
                }
                FrameKind::Close { .. } => {
                    self.done = true;
                    break;
                }
            }
            // Frames are single-line JSON, so one `data:` line carries each.
            chunk.put_slice(&frame.bytes);
            chunk.put_slice(b"\n\n");
        }
        metrics::counter!("runcast_ws_messages_out_total", "transport" => "sse").increment(events);
        self.heartbeat.reset();
        chunk.freeze()
    }
}
