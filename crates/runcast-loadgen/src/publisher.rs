//! Events published straight into JetStream on the subjects the gateway consumes (the api is not
//! what is measured), at a steady rate, with a bounded window of unacknowledged publishes.
//!
//! Every event is `execution.step.started` — never coalesced by the gateway, so every one must
//! reach every client — about [`EVENT_BYTES`] of protobuf, and carries its [`Marker`] in the step
//! name.

use crate::frames::Marker;
use bytes::Bytes;
use prost::Message as _;
use runcast_contract::v1::{Event, EventType, Execution, ExecutionStatus, Step, StepChanged, StepStatus, event};
use runcast_contract::{EntityId, StreamKind, Topology};
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// The size of a published event (protobuf bytes; the gateway's JSON frame is about twice that).
pub const EVENT_BYTES: usize = 200;
/// Publishes awaiting their acknowledgement at most.
const ACK_WINDOW: usize = 512;

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The event of sequence `seq` on execution `execution` of `tenant`: padded to [`EVENT_BYTES`], or
/// with `steps` steps in its state (an execution's state as a dashboard gets it, the kind of
/// event compression is for).
pub fn event(tenant: &str, execution: &str, marker: Marker, steps: usize) -> Event {
    let execution_state = Execution {
        execution_id: execution.to_owned(),
        tenant_id: tenant.to_owned(),
        workflow_id: "bench".to_owned(),
        status: ExecutionStatus::Running.into(),
        version: marker.seq,
        current_step: "step".to_owned(),
        ..Default::default()
    };
    let mut event = Event {
        event_id: format!("00000000-0000-7000-8000-{:012x}", marker.seq),
        tenant_id: tenant.to_owned(),
        execution_id: execution.to_owned(),
        workflow_id: "bench".to_owned(),
        version: marker.seq,
        occurred_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(marker.published_ns / 1_000_000_000).unwrap_or(i64::MAX),
            nanos: i32::try_from(marker.published_ns % 1_000_000_000).unwrap_or(0),
        }),
        r#type: EventType::StepStarted.into(),
        payload: Some(event::Payload::StepChanged(StepChanged {
            step_id: "step".to_owned(),
            name: marker.text(),
            status: StepStatus::Running.into(),
            error: String::new(),
        })),
        state: Some(event::State::Execution(execution_state)),
        ..Default::default()
    };
    let short = EVENT_BYTES.saturating_sub(event.encoded_len());
    if let Some(event::State::Execution(state)) = &mut event.state {
        if steps == 0 {
            state.current_step.extend(std::iter::repeat_n('x', short));
        }
        let at = event.occurred_at;
        state.steps = (0..steps)
            .map(|i| Step {
                step_id: format!("step-{i}"),
                name: format!("stage {i}: build, test and package"),
                status: StepStatus::Completed.into(),
                started_at: at,
                finished_at: at,
                error: String::new(),
            })
            .collect();
    }
    event
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct Load {
    pub tenant: String,
    /// Executions the events are spread over (round robin).
    pub executions: u64,
    pub events_per_second: u64,
    pub duration: Duration,
    /// Steps in each event's state (0: a 200-byte event, see [`event`]).
    pub steps: usize,
}

/// What was published.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Sequences 1..=last were published and acknowledged.
    pub last_seq: u64,
    pub failures: u64,
    /// How far the publisher fell behind its schedule at most.
    pub max_lag: Duration,
}

/// Publishes `load` (for its duration at most) and returns once every publish is acknowledged. `progress` holds the last
/// sequence sent so far, for the caller's windows.
pub async fn run(
    jetstream: &async_nats::jetstream::Context,
    topology: &Topology,
    load: &Load,
    progress: Rc<Cell<u64>>,
) -> anyhow::Result<Published> {
    run_until(jetstream, topology, load, progress, &CancellationToken::new()).await
}

/// [`run`], stopping early once `stop` is cancelled.
pub async fn run_until(
    jetstream: &async_nats::jetstream::Context,
    topology: &Topology,
    load: &Load,
    progress: Rc<Cell<u64>>,
    stop: &CancellationToken,
) -> anyhow::Result<Published> {
    let tenant = EntityId::parse("tenant", &load.tenant)?;
    let executions: Vec<(String, String)> = (0..load.executions.max(1))
        .map(|i| {
            let execution = format!("e-{i}");
            let entity = EntityId::parse("execution", &execution)?;
            Ok((execution, topology.entity_subject(StreamKind::Executions, &tenant, &entity)))
        })
        .collect::<anyhow::Result<_>>()?;
    let total = load.events_per_second.saturating_mul(load.duration.as_secs()).saturating_add(
        u64::try_from(u128::from(load.events_per_second) * u128::from(load.duration.subsec_millis()) / 1000)
            .unwrap_or(0),
    );
    let mut published = Published::default();
    let mut acks = VecDeque::with_capacity(ACK_WINDOW);
    let start = Instant::now();
    let mut seq = 0;
    // A server too busy to acknowledge holds the publisher back (the ack window is full); it
    // still stops on time (5 % past the end: the last event is due at the very end), having
    // published fewer: runs stay bounded, and the count says so.
    let deadline = load.duration + load.duration / 20;
    while seq < total && start.elapsed() < deadline && !stop.is_cancelled() {
        let elapsed = start.elapsed();
        let due = u64::try_from(elapsed.as_micros() * u128::from(load.events_per_second) / 1_000_000)
            .unwrap_or(u64::MAX)
            .min(total);
        if seq >= due {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        // When the next event was due.
        let schedule = Duration::from_micros((seq + 1).saturating_mul(1_000_000) / load.events_per_second.max(1));
        published.max_lag = published.max_lag.max(elapsed.saturating_sub(schedule));
        while seq < due && start.elapsed() < deadline {
            seq += 1;
            let (execution, subject) = &executions[(seq % executions.len() as u64) as usize];
            let marker = Marker { seq, published_ns: now_ns() };
            let bytes = event(&load.tenant, execution, marker, load.steps).encode_to_vec();
            let ack = jetstream.publish(subject.clone(), Bytes::from(bytes)).await?;
            progress.set(seq);
            acks.push_back(ack);
            if acks.len() >= ACK_WINDOW
                && let Some(ack) = acks.pop_front()
                && ack.await.is_err()
            {
                published.failures += 1;
            }
        }
    }
    for ack in acks {
        if ack.await.is_err() {
            published.failures += 1;
        }
    }
    published.last_seq = seq;
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::find_marker;

    #[test]
    fn events_are_about_200_bytes_and_carry_their_marker() {
        for seq in [1, 12_345, 987_654_321] {
            let marker = Marker { seq, published_ns: now_ns() };
            let bytes = event("acme", "e-7", marker, 0).encode_to_vec();
            assert!((EVENT_BYTES..EVENT_BYTES + 3).contains(&bytes.len()), "{} bytes", bytes.len());
            assert_eq!(find_marker(&bytes), Some(marker));
            let decoded = Event::decode(bytes.as_slice()).expect("decodes");
            assert_eq!(decoded.r#type, i32::from(EventType::StepStarted));
        }
    }
}
