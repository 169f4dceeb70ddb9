//! The history seam: replay of one subscription from an offset, and snapshots.
//!
//! A resume reads the channel's stream with a short-lived consumer from `since_offset + 1` up to
//! the stream's last sequence at that moment (JetStream while it still holds the offset), and the
//! part older than the stream's first sequence from the PostgreSQL history the persister keeps
//! (same offsets: `events.stream_offset`). Live events arriving meanwhile are held by the hub and
//! released after the replay, deduplicated by offset. What is held is bounded: a replay slower
//! than the live feed (a source answering slowly while a stream leader is elected) drops what it
//! held and reads on from where it got to, since the stream still holds those events — a few
//! rounds at most before the client is sent `resync`. When neither source holds the offset, the
//! outcome is `recovered: false` and the subscription continues live from the head.
//!
//! Positions have an epoch (DESIGN §7): a resume naming another epoch than the stream's, or an
//! offset beyond the stream's end, belongs to an earlier incarnation of the stream and replays
//! nothing (`epoch_changed`); so does an offset nobody holds (`too_old`) or a gap only the history
//! could fill while PostgreSQL is down (`unavailable`).
//!
//! A snapshot is the last event of the entity's subject; once the stream has aged it out, the read
//! model row the persister keeps (`executions`, `agents`: `state`, `last_offset`).
//!
//! Fairness: replays run in one of the replica's slots (`RUNCAST_REPLAY_CONCURRENCY`), taken after
//! one of the connection's own (`RUNCAST_WS_MAX_REPLAYS_PER_CONNECTION`). A replay whose client
//! does not read (its queue is full) gives the replica slot back while it waits and queues for
//! one again afterwards, so a stalled client never holds a slot others wait for.

use crate::channel::{Channel, Routing};
use crate::fair_slots::{self, FairSlots};
use crate::hub::{Dispatch, Subscriber};
use crate::outbound::{Frame, TryPush};
use crate::protocol::NotRecovered;
use crate::upstream;
use futures::StreamExt;
use runcast_contract::v1::Event;
use runcast_contract::v1::event::State;
use runcast_contract::{EntityId, Topology};
use runcast_eventlog::{EventLog, ReadError, Scope};
use runcast_runtime::{Error, ErrorKind};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a replay went: whether the offset was still held somewhere, and how many events it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub recovered: bool,
    pub replayed: u64,
    /// Why it was not recovered.
    pub reason: Option<NotRecovered>,
    /// Whether the PostgreSQL history had to fill part of the gap (the stream no longer held the
    /// position).
    pub from_history: bool,
    /// Whether the replica's recent window served all of it (no JetStream read).
    pub from_memory: bool,
}

impl Outcome {
    fn lost(reason: NotRecovered, replayed: u64) -> Self {
        Self { recovered: false, replayed, reason: Some(reason), from_history: false, from_memory: false }
    }

    /// Where the resume was served from (`runcast_ws_resumes_total{source}`).
    pub fn source(&self) -> ResumeSource {
        if self.recovered && self.from_memory && !self.from_history {
            return ResumeSource::Memory;
        }
        ResumeSource::classify(self.recovered, self.from_history)
    }
}

/// Where a resume was served from: the stream alone, the PostgreSQL history (then the stream for
/// the newest part), or nowhere (the client reloads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeSource {
    /// The replica's window of recent events.
    Memory,
    JetStream,
    Postgres,
    Unrecoverable,
}

impl ResumeSource {
    pub const ALL: [Self; 4] = [Self::Memory, Self::JetStream, Self::Postgres, Self::Unrecoverable];

    /// A resume that was not recovered is `Unrecoverable` whatever it sent before giving up (a
    /// history failing mid-replay); one that needed the history is `Postgres` even if the stream
    /// served its newest part.
    pub fn classify(recovered: bool, from_history: bool) -> Self {
        match (recovered, from_history) {
            (false, _) => Self::Unrecoverable,
            (true, true) => Self::Postgres,
            (true, false) => Self::JetStream,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::JetStream => "jetstream",
            Self::Postgres => "postgres",
            Self::Unrecoverable => "unrecoverable",
        }
    }
}

/// An entity's current state and the offset of its last event.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub offset: u64,
    pub state: Option<State>,
    /// Read from the read model: the stream holds no event of the entity any more.
    pub from_read_model: bool,
}

/// The event log (JetStream and the PostgreSQL history; in memory in unit tests).
#[derive(Clone)]
pub struct Sources {
    pub log: Arc<dyn EventLog>,
    pub topology: Topology,
    /// Events read per round trip.
    pub batch: usize,
    /// Replays (and snapshots) running at once on this replica: a reconnect storm after a drain
    /// queues here instead of creating thousands of consumers at once, each tenant in its turn.
    pub slots: Arc<FairSlots>,
}

/// What a channel reads from the log: its subjects on the stream, its entity in the history.
fn scope(channel: &Channel, topology: &Topology, tenant: &EntityId) -> Scope {
    let id = |id: &EntityId| Some(id.to_string());
    let (execution_id, agent_id, workflow_id) = match channel {
        Channel::Execution(execution) | Channel::Logs(execution) => (id(execution), None, None),
        Channel::Agent(agent) => (None, id(agent), None),
        Channel::Workflow(workflow) => (None, None, id(workflow)),
        Channel::Executions | Channel::Approvals | Channel::Agents => (None, None, None),
    };
    Scope { subject: channel.replay_subject(topology, tenant), execution_id, agent_id, workflow_id }
}

/// Waits for a permit of `slots`; `None` when `cancel` fires first (or the semaphore is closed).
pub async fn acquire(slots: &Arc<Semaphore>, cancel: &CancellationToken) -> Option<OwnedSemaphorePermit> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        permit = slots.clone().acquire_owned() => permit.ok(),
    }
}

/// One of the replica's replay slots, held by one replay, and given back while that replay waits
/// for its client to make room.
pub struct Slot {
    slots: Arc<FairSlots>,
    tenant: EntityId,
    permit: Option<fair_slots::Permit>,
}

impl Slot {
    /// Whether the slot is held right now.
    pub fn is_held(&self) -> bool {
        self.permit.is_some()
    }

    fn release(&mut self) {
        self.permit = None;
    }

    /// Takes a slot again (in its tenant's turn); `false` when `cancel` fires first.
    async fn reacquire(&mut self, cancel: &CancellationToken) -> bool {
        if self.permit.is_none() {
            self.permit = fair_acquire(&self.slots, &self.tenant, cancel).await;
        }
        self.permit.is_some()
    }
}

/// Waits for a slot of `slots` in `tenant`'s turn; `None` when `cancel` fires first.
async fn fair_acquire(slots: &FairSlots, tenant: &EntityId, cancel: &CancellationToken) -> Option<fair_slots::Permit> {
    tokio::select! {
        _ = cancel.cancelled() => None,
        permit = slots.acquire(tenant) => Some(permit),
    }
}

impl Sources {
    /// Waits for a replay slot in `tenant`'s turn; `None` when `cancel` fires first.
    pub async fn slot(&self, tenant: &EntityId, cancel: &CancellationToken) -> Option<Slot> {
        let permit = fair_acquire(&self.slots, tenant, cancel).await?;
        Some(Slot { slots: self.slots.clone(), tenant: tenant.clone(), permit: Some(permit) })
    }

    /// The current state of the channel's entity: its last event on the stream, else its read
    /// model row (`None` for channels without an entity or an entity nobody knows). PostgreSQL
    /// down when the read model is needed: `Unavailable`, never `None`.
    pub async fn snapshot(&self, tenant: &EntityId, channel: &Channel) -> Result<Option<Snapshot>, Error> {
        let Some(entity) = channel.snapshot_entity() else {
            return Ok(None);
        };
        let kind = channel.stream();
        let subject = self.topology.entity_subject(kind, tenant, entity);
        if let Some(last) = self.log.last(kind, &subject).await? {
            return Ok(upstream::decode(kind, &last.subject, &last.payload, last.offset).map(|(_, event)| Snapshot {
                offset: event.offset,
                state: event.state,
                from_read_model: false,
            }));
        }
        let state = self.log.archived(kind, tenant, entity).await?;
        Ok(state.map(|state| {
            let offset = match &state {
                State::Agent(agent) => agent.offset,
                State::Execution(execution) => execution.offset,
            };
            Snapshot { offset, state: Some(state), from_read_model: true }
        }))
    }

    /// Replays everything the subscriber wants after `since` (of epoch `since_epoch`, when the
    /// client named one), through [`Subscriber::replayed`].
    pub async fn replay(
        &self,
        subscriber: &Subscriber,
        since: u64,
        since_epoch: Option<&str>,
        slot: &mut Slot,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Error> {
        let kind = subscriber.channel.stream();
        let plan = match runcast_eventlog::plan(self.log.as_ref(), kind, since, since_epoch).await? {
            Ok(plan) => plan,
            Err(reason) => return Ok(Outcome::lost(reason, 0)),
        };
        let scope = scope(&subscriber.channel, &self.topology, &subscriber.tenant);
        let mut events =
            runcast_eventlog::read_after(self.log.as_ref(), kind, &subscriber.tenant, &scope, since, &plan, self.batch);
        let mut replayed = 0;
        while let Some(read) = events.next().await {
            if cancel.is_cancelled() {
                break;
            }
            let logged = match read {
                Ok(logged) => logged,
                Err(ReadError { from_history: true, error }) if error.kind() == ErrorKind::Unavailable => {
                    // What was sent is right; the rest of the gap cannot be filled now.
                    tracing::warn!(cause = %error, replayed, "the history failed mid-replay; resume not recovered");
                    return Ok(Outcome::lost(NotRecovered::Unavailable, replayed));
                }
                Err(ReadError { error, .. }) => return Err(error),
            };
            let Some((routing, event)) = upstream::decode(kind, &logged.subject, &logged.payload, logged.offset) else {
                continue;
            };
            if !subscriber.wants(&routing, &event) {
                continue;
            }
            if !deliver(subscriber, &routing, &event, logged.offset, slot, cancel).await {
                break;
            }
            replayed += 1;
        }
        Ok(Outcome { recovered: true, replayed, reason: None, from_history: plan.from_history, from_memory: false })
    }
}

/// Replays from the replica's recent window (see [`crate::hub::Hub::recent_after`]) everything
/// after `since` the subscriber wants; `None` when the window does not cover `since`.
pub async fn replay_recent(
    hub: &crate::hub::Hub,
    subscriber: &Subscriber,
    since: u64,
    since_epoch: Option<&str>,
    slot: &mut Slot,
    cancel: &CancellationToken,
) -> Option<Outcome> {
    let events = hub.recent_after(subscriber.channel.stream(), since, since_epoch)?;
    let mut replayed = 0;
    for recent in events {
        if cancel.is_cancelled() {
            break;
        }
        if !subscriber.wants(&recent.routing, &recent.event) {
            continue;
        }
        let Some(frame) = subscriber.replay_recent_frame(&recent) else {
            continue; // already given
        };
        if !queue(subscriber, frame, slot, cancel).await {
            break;
        }
        replayed += 1;
    }
    Some(Outcome { recovered: true, replayed, reason: None, from_history: false, from_memory: true })
}

/// Queues one replayed event. When the client's queue is full, the replica slot is given back
/// while waiting for room and taken again afterwards. `false`: stop the replay (the connection is
/// gone or overflowed, or the subscription was cancelled).
async fn deliver(
    subscriber: &Subscriber,
    routing: &Routing,
    event: &Event,
    offset: u64,
    slot: &mut Slot,
    cancel: &CancellationToken,
) -> bool {
    let Ok(data) = crate::protocol::event_data(event) else {
        return true; // skipped, like the live path does
    };
    let Some(frame) = subscriber.replay_frame(&Dispatch::new(routing, event, offset, data, None)) else {
        return true; // already given
    };
    queue(subscriber, frame, slot, cancel).await
}

/// Queues a replayed frame, as [`deliver`] says.
async fn queue(subscriber: &Subscriber, frame: Frame, slot: &mut Slot, cancel: &CancellationToken) -> bool {
    let frame = match subscriber.outbound.try_push_event(frame) {
        TryPush::Queued => return true,
        TryPush::Closed => return false,
        TryPush::Full(frame) => frame,
    };
    slot.release();
    metrics::counter!("runcast_ws_replay_slot_yields_total").increment(1);
    let pushed = tokio::select! {
        _ = cancel.cancelled() => None,
        pushed = subscriber.outbound.push_event_waiting(frame) => pushed,
    };
    pushed.is_some() && slot.reacquire(cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_is_counted_where_it_was_served_from() {
        assert_eq!(ResumeSource::classify(true, false), ResumeSource::JetStream);
        assert_eq!(ResumeSource::classify(true, true), ResumeSource::Postgres);
        assert_eq!(ResumeSource::classify(false, false), ResumeSource::Unrecoverable);
        assert_eq!(ResumeSource::classify(false, true), ResumeSource::Unrecoverable, "a history that failed mid-way");
        let lost = Outcome::lost(NotRecovered::TooOld, 0);
        assert_eq!(lost.source(), ResumeSource::Unrecoverable);
        let from_stream =
            Outcome { recovered: true, replayed: 3, reason: None, from_history: false, from_memory: false };
        assert_eq!(from_stream.source().as_str(), "jetstream");
        let from_history = Outcome { from_history: true, ..from_stream };
        assert_eq!(from_history.source().as_str(), "postgres");
        let from_memory = Outcome { from_memory: true, ..from_stream };
        assert_eq!(from_memory.source().as_str(), "memory");
        assert_eq!(Outcome { recovered: false, ..from_memory }.source(), ResumeSource::Unrecoverable);
        let names: Vec<_> = ResumeSource::ALL.iter().map(|source| source.as_str()).collect();
        assert_eq!(names, ["memory", "jetstream", "postgres", "unrecoverable"]);
    }
}
