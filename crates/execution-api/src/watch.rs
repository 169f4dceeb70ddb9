//! `WatchExecution`: the execution's current state (its last event), then every later event, from
//! an ordered consumer on the execution's subject — or, with `from_offset`, exactly the events
//! after that offset. The stream ends after a terminal event, when the client goes away, or when
//! the service shuts down. One bounded channel per watcher: a slow client slows only itself.

use crate::error::ApiError;
use crate::store::EventStore;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt as _;
use prost::Message as _;
use runcast_contract::v1::{Event, ExecutionStatus, event};
use runcast_contract::{EntityId, StreamKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const BUFFERED_EVENTS: usize = 64;

pub type WatchStream = ReceiverStream<Result<Event, tonic::Status>>;

fn is_terminal(event: &Event) -> bool {
    matches!(&event.state, Some(event::State::Execution(e))
        if ExecutionStatus::try_from(e.status).is_ok_and(ExecutionStatus::is_terminal))
}

pub async fn watch(
    store: &EventStore,
    tenant: &EntityId,
    execution_id: &EntityId,
    from_offset: u64,
    shutdown: CancellationToken,
) -> Result<WatchStream, ApiError> {
    let last = store
        .last(StreamKind::Executions, tenant, execution_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {execution_id}")))?;
    let (sender, receiver) = mpsc::channel(BUFFERED_EVENTS);
    let finished = is_terminal(&last.event) && from_offset >= last.sequence;
    if from_offset == 0 || finished {
        let terminal = is_terminal(&last.event);
        if from_offset == 0 {
            let _ = sender.send(Ok(last.event.clone())).await;
        }
        if terminal {
            return Ok(ReceiverStream::new(receiver));
        }
    }
    let start_sequence = if from_offset > 0 { from_offset + 1 } else { last.sequence + 1 };
    let stream_name = store.topology().stream_name(StreamKind::Executions);
    let unavailable =
        |err: &dyn std::fmt::Display| ApiError::unavailable(format!("cannot follow execution {execution_id}: {err}"));
    let stream = store.jetstream().get_stream_no_info(&stream_name).await.map_err(|err| unavailable(&err))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: store.subject(StreamKind::Executions, tenant, execution_id),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ..Default::default()
        })
        .await
        .map_err(|err| unavailable(&err))?;
    let mut messages = consumer.messages().await.map_err(|err| unavailable(&err))?;
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = sender.send(Err(tonic::Status::unavailable("the server is shutting down: watch again from your last offset"))).await;
                    return;
                }
                _ = sender.closed() => return,
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    let _ = sender
                        .send(Err(tonic::Status::unavailable(format!(
                            "lost the event stream ({err}): watch again from your last offset"
                        ))))
                        .await;
                    return;
                }
                None => return,
            };
            let offset = message.info().map(|info| info.stream_sequence).unwrap_or(0);
            let mut event = match Event::decode(message.payload.as_ref()) {
                Ok(event) => event,
                Err(err) => {
                    tracing::error!(offset, cause = %err, "an event in the stream does not decode; skipping it");
                    continue;
                }
            };
            event.offset = offset;
            if let Some(event::State::Execution(execution)) = event.state.as_mut() {
                execution.offset = offset;
            }
            let terminal = is_terminal(&event);
            if sender.send(Ok(event)).await.is_err() || terminal {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(receiver))
}
