//! The upstream seam: one ordered consumer per stream per replica feeds the [`Hub`], however many
//! clients are connected. Contract: events reach the hub in stream order, each exactly once, with
//! `offset` = stream sequence; the hub's head for a stream is set before the first dispatch, so a
//! subscription registered at head `h` receives every event above `h`.
//!
//! The ordered consumer starts right after the stream's last sequence at start-up (clients resume
//! older positions through replay), and after a failure it is recreated from the hub's head + 1,
//! so a NATS restart leaves neither a gap nor a duplicate.

use crate::channel::Routing;
use crate::hub::{Dispatch, Hub};
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures::StreamExt;
use prost::Message as _;
use runcast_contract::StreamKind;
use runcast_contract::v1::Event;
use runcast_runtime::nats::Nats;
use runcast_runtime::ops::ReadyFlag;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Runs the consumer of `kind` until `shutdown`, recreating it with capped backoff.
pub async fn run(nats: Nats, hub: Arc<Hub>, kind: StreamKind, provisioned: ReadyFlag, shutdown: CancellationToken) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = provisioned.wait() => {}
    }
    let mut delay = Duration::from_millis(100);
    let mut started = false;
    loop {
        match consume(&nats, &hub, kind, &shutdown, &mut started).await {
            Ok(()) => return, // shutdown
            Err(err) => {
                hub.stop_stream(kind);
                tracing::warn!(stream = kind.base_name(), cause = %err, retry_in = ?delay, "upstream consumer failed; recreating");
                metrics::counter!("runcast_ws_upstream_restarts_total", "stream" => kind.base_name()).increment(1);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn consume(
    nats: &Nats,
    hub: &Hub,
    kind: StreamKind,
    shutdown: &CancellationToken,
    started: &mut bool,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let name = nats.topology.stream_name(kind);
    let stream = nats.jetstream.get_stream(&name).await?;
    // The first time: from the end of the stream. After a failure: right after the last event
    // dispatched, so nothing published while the consumer was down is skipped.
    let start = if *started { hub.head(kind) + 1 } else { stream.get_info().await?.state.last_sequence + 1 };
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: nats.topology.stream_subjects(kind),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    hub.start_stream(kind, start - 1);
    *started = true;
    tracing::info!(
        stream = %name,
        from_offset = start,
        "upstream consumer running"
    );
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            next = messages.next() => match next {
                Some(message) => message?,
                None => return Err("the ordered consumer ended".into()),
            },
        };
        let received = Instant::now();
        let offset = message.info()?.stream_sequence;
        metrics::counter!("runcast_ws_upstream_events_total", "stream" => kind.base_name()).increment(1);
        let Some((routing, event)) = decode(kind, &message.subject, &message.payload, offset) else {
            continue;
        };
        let data = match crate::protocol::event_data(&event) {
            Ok(data) => data,
            Err(err) => {
                tracing::warn!(offset, cause = %err, "event cannot be encoded as JSON; skipped");
                continue;
            }
        };
        // One span per event and replica, continuing the trace of the command that caused it.
        let span = tracing::info_span!("dispatch", stream = kind.base_name(), offset);
        runcast_runtime::telemetry::trace_context::follow_nats(&span, message.headers.as_ref());
        span.in_scope(|| hub.dispatch(&Dispatch::new(&routing, &event, offset, data, Some(received))));
    }
}

/// Decodes a stored event and routes it by its subject; `None` (logged, counted) for anything
/// that is not a Runcast event, so one bad message never stops the feed.
pub fn decode(kind: StreamKind, subject: &str, payload: &[u8], offset: u64) -> Option<(Routing, Event)> {
    let mut event = match Event::decode(payload) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(stream = kind.base_name(), offset, cause = %err, "undecodable event skipped");
            metrics::counter!("runcast_ws_undecodable_events_total").increment(1);
            return None;
        }
    };
    event.offset = offset;
    let Some(routing) = Routing::from_subject(kind, subject, &event) else {
        tracing::warn!(stream = kind.base_name(), offset, subject, "event on an unexpected subject skipped");
        metrics::counter!("runcast_ws_undecodable_events_total").increment(1);
        return None;
    };
    Some((routing, event))
}
