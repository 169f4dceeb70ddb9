//! The upstream seam: one ordered consumer per stream per replica feeds the [`Hub`], however many
//! clients are connected. Contract: events reach the hub in stream order, each exactly once, with
//! `offset` = stream sequence; the hub's head for a stream is set before the first dispatch, so a
//! subscription registered at head `h` receives every event above `h`.
//!
//! The ordered consumer starts right after the stream's last sequence at start-up (clients resume
//! older positions through replay), and after a failure it is recreated from the hub's head + 1,
//! so a NATS restart leaves neither a gap nor a duplicate.
//!
//! A restarted server has forgotten the ephemeral consumer, and the client library would only
//! notice after missing idle heartbeats (tens of seconds). So the consumer also watches the
//! connection ([`Nats::link`]): while it is down the stream is not live (`/readyz` answers 503),
//! and on the reconnect the consumer is recreated at once.

use crate::channel::Routing;
use crate::hub::{Dispatch, Hub, RecentEvent};
use prost::Message as _;
use runcast_contract::StreamKind;
use runcast_contract::v1::Event;
use runcast_runtime::backoff::Backoff;
use runcast_runtime::nats::feed::{FeedOptions, OrderedFeed};
use runcast_runtime::nats::{Link, Nats};
use runcast_runtime::ops::ReadyFlag;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// First wait before recreating a failed consumer; it doubles up to [`MAX_RETRY_DELAY`]. Short:
/// right after a NATS restart JetStream may need a moment before it answers.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often a running consumer checks that its stream is still the one it started on. A deleted
/// and re-created stream does not stop an ordered consumer (the client library recreates it on
/// the new stream, past offsets that stream will take long to reach): only the epoch shows it.
const EPOCH_CHECK: Duration = Duration::from_secs(3);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a running consumer stopped.
enum Stopped {
    /// The replica is shutting down.
    Shutdown,
    /// The connection dropped, or came back after a drop: the consumer is gone with the server.
    Link,
    /// Anything else: recreate after a backoff.
    Failed(BoxError),
}

/// Most events one pull of the live feed asks for.
const UPSTREAM_BATCH: usize = 32;

/// Runs the consumer of `kind` until `shutdown`, recreating it after a reconnect at once and after
/// other failures with capped backoff.
pub(crate) async fn run(
    nats: Nats,
    hub: Arc<Hub>,
    kind: StreamKind,
    provisioned: ReadyFlag,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = provisioned.wait() => {}
    }
    let mut link = nats.link.clone();
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
    let mut started = false;
    loop {
        let connects = link.borrow_and_update().connects;
        let mut running = false;
        match consume(&nats, &hub, kind, &shutdown, &mut started, &mut running, &mut link).await {
            Stopped::Shutdown => return,
            Stopped::Link => {
                hub.stop_stream(kind);
                tracing::info!(stream = kind.base_name(), "NATS connection lost or renewed; recreating the consumer");
                metrics::counter!("runcast_ws_upstream_restarts_total", "stream" => kind.base_name()).increment(1);
                backoff.reset();
                // Recreate as soon as the connection is up again.
                if !wait_connected(&nats, &mut link, &shutdown).await {
                    return;
                }
                continue;
            }
            Stopped::Failed(err) => {
                hub.stop_stream(kind);
                if running {
                    backoff.reset();
                }
                tracing::warn!(stream = kind.base_name(), cause = %err, retry_in = ?backoff.peek(), "upstream consumer failed; recreating");
                metrics::counter!("runcast_ws_upstream_restarts_total", "stream" => kind.base_name()).increment(1);
            }
        }
        // Wait out the backoff, but retry at once when the client reconnects meanwhile.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff.next()) => {}
            _ = reconnected(&mut link, connects) => {}
        }
    }
}

/// Resolves once the connection is up (`false`: `shutdown` fired). The client's own state is
/// polled too, in case its event was dropped (the client sends events without waiting).
async fn wait_connected(nats: &Nats, link: &mut watch::Receiver<Link>, shutdown: &CancellationToken) -> bool {
    loop {
        if link.borrow_and_update().connected
            || nats.client.connection_state() == async_nats::connection::State::Connected
        {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            changed = link.changed() => if changed.is_err() {
                // The client is gone with its events: polling is all that is left.
                tokio::time::sleep(Duration::from_millis(200)).await;
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

/// Resolves when the client has connected again since `connects` (never if the watch ends).
async fn reconnected(link: &mut watch::Receiver<Link>, connects: u64) {
    if link.wait_for(|link| link.connected && link.connects > connects).await.is_err() {
        std::future::pending::<()>().await;
    }
}

use runcast_eventlog::{epoch, same_epoch};

async fn consume(
    nats: &Nats,
    hub: &Hub,
    kind: StreamKind,
    shutdown: &CancellationToken,
    started: &mut bool,
    running: &mut bool,
    link: &mut watch::Receiver<Link>,
) -> Stopped {
    let connects = link.borrow_and_update().connects;
    let name = nats.topology.stream_name(kind);
    let setup = async {
        let mut stream = nats.jetstream.get_stream(&name).await?;
        let info = stream.info().await?;
        let epoch = epoch(info);
        let known = hub.epoch(kind);
        let recreated = *started && !known.is_empty() && !same_epoch(&known, &epoch);
        // The first time, or on a re-created stream: from the end of the stream. After a failure:
        // right after the last event dispatched, so nothing published while the consumer was down
        // is skipped.
        let start = if *started && !recreated { hub.head(kind) + 1 } else { info.state.last_sequence + 1 };
        // At most UPSTREAM_BATCH messages in flight to this replica: with events up to 1 MiB,
        // what the feed may hold before the hub sees it stays bounded.
        let options = FeedOptions { batch: UPSTREAM_BATCH, ..FeedOptions::default() };
        let messages =
            OrderedFeed::start(&nats.jetstream, &name, nats.topology.stream_subjects(kind), start, options).await?;
        Ok::<_, BoxError>((stream, messages, start, epoch, recreated))
    };
    let (stream, mut messages, start, epoch, recreated) = tokio::select! {
        _ = shutdown.cancelled() => return Stopped::Shutdown,
        // A reconnect while creating: the consumer may have been created on the old server.
        _ = reconnected(link, connects) => return Stopped::Link,
        setup = setup => match setup {
            Ok(setup) => setup,
            Err(err) => return Stopped::Failed(err),
        },
    };
    if recreated {
        tracing::warn!(stream = %name, %epoch, "the stream was re-created: subscriptions of it are resynced from offset 0");
        hub.restart_stream(kind, start - 1, &epoch);
    } else {
        hub.start_stream(kind, start - 1, &epoch);
    }
    *started = true;
    *running = true;
    tracing::info!(stream = %name, from_offset = start, %epoch, "upstream consumer running");
    let lag = metrics::gauge!("runcast_ws_delivery_lag_seconds", "stream" => kind.base_name());
    let upstream_events = metrics::counter!("runcast_ws_upstream_events_total", "stream" => kind.base_name());
    let mut epoch_check = tokio::time::interval(EPOCH_CHECK);
    epoch_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    epoch_check.reset();
    let mut checking: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>> = None;
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return Stopped::Shutdown,
            _ = epoch_check.tick(), if checking.is_none() => {
                // Runs beside the feed: a check stuck on a dead connection must not delay noticing
                // the reconnect.
                let stream = stream.clone();
                checking = Some(Box::pin(async move { stream.get_info().await.ok().map(|info| self::epoch(&info)) }));
                continue;
            }
            Some(current) = futures::future::OptionFuture::from(checking.as_mut()), if checking.is_some() => {
                checking = None;
                // Best effort: a failed check is retried at the next tick; the feed's own errors
                // and the connection's state say when NATS is gone.
                if current.is_some_and(|current| !same_epoch(&current, &epoch)) {
                    return Stopped::Failed(format!("stream {name} was re-created").into());
                }
                continue;
            }
            changed = link.changed() => {
                let now = *link.borrow_and_update();
                if changed.is_err() || !now.connected || now.connects != connects {
                    return Stopped::Link;
                }
                continue;
            }
            next = messages.next() => match next {
                Ok(message) => message,
                Err(err) => return Stopped::Failed(err.into()),
            },
        };
        let received = Instant::now();
        let offset = match message.info() {
            Ok(info) => info.stream_sequence,
            Err(err) => return Stopped::Failed(err),
        };
        upstream_events.increment(1);
        hub.observe(kind, offset);
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
        // One span per event and replica, continuing the trace of the command that caused it;
        // recorded only when traces leave the process (else a DEBUG span, for logs).
        let span = runcast_runtime::traced_span!("dispatch", stream = kind.base_name(), offset);
        runcast_runtime::telemetry::trace_context::follow_nats(&span, message.headers.as_ref());
        if let Some(seconds) = lag_seconds(event.occurred_at.as_ref(), std::time::SystemTime::now()) {
            lag.set(seconds);
        }
        // Into the recent window first, then to the subscribers (the order `hold` relies on).
        let recent = Arc::new(RecentEvent::new(offset, routing, event, data));
        hub.remember(kind, recent.clone());
        span.in_scope(|| {
            hub.dispatch(&Dispatch::new(&recent.routing, &recent.event, offset, recent.data.clone(), Some(received)))
        });
    }
}

/// `runcast_ws_delivery_lag_seconds`: how long ago (at `now`) the api accepted an event this
/// replica is dispatching, from the event's `occurred_at`. Taken at dispatch, so an idle stream
/// keeps the lag of its last event instead of growing; never negative (clocks of api replicas and
/// gateways may differ slightly). `None` for an event without a time.
pub(crate) fn lag_seconds(occurred_at: Option<&prost_types::Timestamp>, now: std::time::SystemTime) -> Option<f64> {
    let occurred_at = occurred_at?;
    let since_epoch = now.duration_since(std::time::UNIX_EPOCH).ok()?;
    let nanos = i128::from(occurred_at.seconds) * 1_000_000_000 + i128::from(occurred_at.nanos);
    let lag = i128::try_from(since_epoch.as_nanos()).ok()? - nanos;
    Some((lag.max(0) as f64) / 1e9)
}

/// The offset is not part of the published bytes: whoever reads the event fills it in, on the
/// event and on the state it carries (the state's `offset` is that of the entity's last event).
pub(crate) fn set_offset(event: &mut Event, offset: u64) {
    use runcast_contract::v1::event::State;
    event.offset = offset;
    match &mut event.state {
        Some(State::Execution(execution)) => execution.offset = offset,
        Some(State::Agent(agent)) => agent.offset = offset,
        None => {}
    }
}

/// Decodes a stored event and routes it by its subject; `None` (logged, counted) for anything
/// that is not a Runcast event, so one bad message never stops the feed.
pub(crate) fn decode(kind: StreamKind, subject: &str, payload: &[u8], offset: u64) -> Option<(Routing, Event)> {
    let mut event = match Event::decode(payload) {
        Ok(event) => event,
        Err(err) => {
            tracing::warn!(stream = kind.base_name(), offset, cause = %err, "undecodable event skipped");
            metrics::counter!("runcast_ws_undecodable_events_total").increment(1);
            return None;
        }
    };
    set_offset(&mut event, offset);
    let Some(routing) = Routing::from_subject(kind, subject, &event) else {
        tracing::warn!(stream = kind.base_name(), offset, subject, "event on an unexpected subject skipped");
        metrics::counter!("runcast_ws_undecodable_events_total").increment(1);
        return None;
    };
    Some((routing, event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use runcast_contract::v1::{Execution, event::State};

    #[test]
    fn the_delivery_lag_is_the_age_of_the_event_at_dispatch_never_negative() {
        let now = std::time::UNIX_EPOCH + Duration::from_millis(1_790_000_010_250);
        let occurred = prost_types::Timestamp { seconds: 1_790_000_010, nanos: 0 };
        let lag = lag_seconds(Some(&occurred), now).expect("a lag");
        assert!((lag - 0.25).abs() < 1e-6, "{lag}");
        let later = prost_types::Timestamp { seconds: 1_790_000_011, nanos: 0 };
        assert_eq!(lag_seconds(Some(&later), now), Some(0.0), "a clock ahead of ours is no negative lag");
        assert_eq!(lag_seconds(None, now), None);
    }

    #[test]
    fn the_offset_is_set_on_the_event_and_on_its_state() {
        let mut event = Event { state: Some(State::Execution(Execution::default())), ..Default::default() };
        set_offset(&mut event, 17);
        assert_eq!(event.offset, 17);
        assert!(matches!(event.state, Some(State::Execution(Execution { offset: 17, .. }))));
    }
}
