//! `WatchExecution`: the execution's current state (its last event), then every later event, from
//! an ordered consumer on the execution's subject — or, with `from_offset`, exactly the events
//! after that offset: the part the stream has aged out is read from the PostgreSQL history
//! through the event log (as the gateway's resume reads it), the rest from the stream. Once the
//! stream has aged the execution's events out, the current state is the read model's, sent as an
//! event of the type its status implies (no `event_id`, no payload). The stream ends after a
//! terminal event, when the client goes away, or when the service shuts down. One bounded channel
//! per watcher: a slow client slows only itself.

use crate::commands::Executions;
use crate::error::ApiError;
use futures::StreamExt as _;
use prost::Message as _;
use runcast_contract::gateway::NotRecovered;
use runcast_contract::v1::{Event, EventType, Execution, ExecutionStatus, event};
use runcast_contract::{EntityId, StreamKind};
use runcast_eventlog::{EventLog, Plan, Scope};
use runcast_runtime::nats::feed::{FeedOptions, OrderedFeed};
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const BUFFERED_EVENTS: usize = 64;

/// History events read per page when `from_offset` is older than the stream.
const HISTORY_PAGE: usize = 256;

/// One watch is one ephemeral consumer with a pull request always waiting: a heartbeat every
/// 15 s (as async-nats' ordered consumer had) keeps thousands of idle watches cheap for the
/// server; a silent server is still noticed within 30 s.
const WATCH_FEED: FeedOptions = FeedOptions {
    batch: 32,
    expires: std::time::Duration::from_secs(30),
    heartbeat: std::time::Duration::from_secs(15),
};

pub(crate) type WatchStream = ReceiverStream<Result<Event, tonic::Status>>;

fn is_terminal(event: &Event) -> bool {
    matches!(&event.state, Some(event::State::Execution(e))
        if ExecutionStatus::try_from(e.status).is_ok_and(ExecutionStatus::is_terminal))
}

/// The current state of an execution whose last event the stream no longer holds, as an event.
pub(crate) fn state_event(execution: Execution) -> Event {
    let event_type = match ExecutionStatus::try_from(execution.status) {
        Ok(ExecutionStatus::Pending | ExecutionStatus::Unspecified) | Err(_) => EventType::ExecutionCreated,
        Ok(ExecutionStatus::Running) => EventType::ExecutionProgress,
        Ok(ExecutionStatus::Paused) => EventType::ExecutionPaused,
        Ok(ExecutionStatus::Blocked) => EventType::ExecutionBlocked,
        Ok(ExecutionStatus::Completed) => EventType::ExecutionCompleted,
        Ok(ExecutionStatus::Failed) => EventType::ExecutionFailed,
        Ok(ExecutionStatus::Cancelled) => EventType::ExecutionCancelled,
    };
    Event {
        tenant_id: execution.tenant_id.clone(),
        execution_id: execution.execution_id.clone(),
        agent_id: execution.agent_id.clone(),
        workflow_id: execution.workflow_id.clone(),
        version: execution.version,
        occurred_at: execution.updated_at,
        r#type: event_type.into(),
        offset: execution.offset,
        state: Some(event::State::Execution(execution)),
        ..Default::default()
    }
}

/// A `from_offset` beyond everything the stream ever held is not a position of this stream.
fn check_from_offset(after: u64, last: u64) -> Result<(), ApiError> {
    if after > last {
        return Err(ApiError::invalid(
            "from_offset",
            format!("is {after}, beyond the stream's last offset {last}: watch from an offset you received"),
        ));
    }
    Ok(())
}

/// Decodes a stored event and sets its offset (on the event and its state).
fn decode(payload: &[u8], offset: u64) -> Option<Event> {
    let mut event = match Event::decode(payload) {
        Ok(event) => event,
        Err(err) => {
            tracing::error!(offset, cause = %err, "an event does not decode; skipping it");
            return None;
        }
    };
    event.offset = offset;
    if let Some(event::State::Execution(execution)) = event.state.as_mut() {
        execution.offset = offset;
    }
    Some(event)
}

/// Where the events after `after` are: `None` when the stream still holds them all, else the
/// plan to read the history first. Nobody holding them is an error naming `from_offset`.
async fn history_plan(log: &dyn EventLog, after: u64, execution_id: &EntityId) -> Result<Option<Plan>, ApiError> {
    let unavailable =
        |err: &dyn std::fmt::Display| ApiError::unavailable(format!("cannot read execution {execution_id}: {err}"));
    let plan = match runcast_eventlog::plan(log, StreamKind::Executions, after, None).await {
        Ok(Ok(plan)) => plan,
        Ok(Err(NotRecovered::EpochChanged)) => {
            let last = log.bounds(StreamKind::Executions).await.map_err(|err| unavailable(&err))?.last;
            check_from_offset(after, last)?;
            return Err(unavailable(&"the stream changed while reading it"));
        }
        Ok(Err(NotRecovered::TooOld)) => {
            return Err(ApiError::new(
                crate::error::ApiErrorKind::FailedPrecondition,
                format!(
                    "from_offset {after} is older than the history keeps (retention): watch without from_offset \
                     to start from the current state"
                ),
            ));
        }
        Ok(Err(_)) => {
            return Err(unavailable(&"the history (PostgreSQL) cannot be read now: retry with the same from_offset"));
        }
        Err(err) => return Err(unavailable(&err)),
    };
    Ok(plan.from_history.then_some(plan))
}

pub(crate) async fn watch(
    executions: &Executions,
    log: &Arc<dyn EventLog>,
    tenant: &EntityId,
    execution_id: &EntityId,
    from_offset: Option<u64>,
    shutdown: CancellationToken,
) -> Result<WatchStream, ApiError> {
    let current = executions
        .current(tenant, execution_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {execution_id}")))?;
    let last_sequence = current.execution.offset;
    let last_event = match current.last_event {
        Some(event) => event,
        None => state_event(current.execution),
    };
    let (sender, receiver) = mpsc::channel(BUFFERED_EVENTS);
    let terminal = is_terminal(&last_event);
    let mut from_history = None;
    let start_sequence = match from_offset {
        None => {
            let _ = sender.send(Ok(last_event)).await;
            if terminal {
                return Ok(ReceiverStream::new(receiver));
            }
            last_sequence + 1
        }
        Some(after) if terminal && after >= last_sequence => return Ok(ReceiverStream::new(receiver)),
        Some(after) => match history_plan(log.as_ref(), after, execution_id).await? {
            // The history first, then the stream after what it held when the read started.
            Some(plan) => {
                let start = plan.bounds.last + 1;
                from_history = Some((after, plan));
                start
            }
            None => after.saturating_add(1),
        },
    };
    let store = executions.store();
    let stream_name = store.topology().stream_name(StreamKind::Executions);
    let unavailable =
        |err: &dyn std::fmt::Display| ApiError::unavailable(format!("cannot follow execution {execution_id}: {err}"));
    // `history_plan` checked `from_offset` against the stream's bounds already.
    let mut messages = OrderedFeed::start(
        store.jetstream(),
        &stream_name,
        store.subject(StreamKind::Executions, tenant, execution_id),
        start_sequence,
        WATCH_FEED,
    )
    .await
    .map_err(|err| unavailable(&err))?;
    let (log, tenant) = (log.clone(), tenant.clone());
    let scope = Scope {
        subject: store.subject(StreamKind::Executions, &tenant, execution_id),
        execution_id: Some(execution_id.to_string()),
        ..Scope::default()
    };
    tokio::spawn(async move {
        if let Some((after, plan)) = from_history {
            let mut missed = runcast_eventlog::read_after(
                log.as_ref(),
                StreamKind::Executions,
                &tenant,
                &scope,
                after,
                &plan,
                HISTORY_PAGE,
            );
            while let Some(read) = missed.next().await {
                let logged = match read {
                    Ok(logged) => logged,
                    Err(err) => {
                        let status = tonic::Status::unavailable(format!(
                            "cannot read the missed events ({}): watch again from your last offset",
                            err.error
                        ));
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                let Some(event) = decode(&logged.payload, logged.offset) else { continue };
                let terminal = is_terminal(&event);
                if sender.send(Ok(event)).await.is_err() || terminal {
                    return;
                }
            }
        }
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
                Ok(message) => message,
                Err(err) => {
                    let _ = sender
                        .send(Err(tonic::Status::unavailable(format!(
                            "lost the event stream ({err}): watch again from your last offset"
                        ))))
                        .await;
                    return;
                }
            };
            let offset = message.info().map(|info| info.stream_sequence).unwrap_or(0);
            let Some(event) = decode(&message.payload, offset) else { continue };
            let terminal = is_terminal(&event);
            if sender.send(Ok(event)).await.is_err() || terminal {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(receiver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_beyond_the_stream_are_refused_naming_the_field() {
        assert!(check_from_offset(10, 10).is_ok());
        assert!(check_from_offset(0, 10).is_ok());
        let err = check_from_offset(u64::MAX, 10).expect_err("beyond");
        assert_eq!(err.kind(), crate::error::ApiErrorKind::InvalidArgument);
        assert!(err.to_string().starts_with("from_offset is 18446744073709551615, beyond the stream's last offset 10"));
    }
}
