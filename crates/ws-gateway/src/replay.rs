//! The history seam: replay of one subscription from an offset, and snapshots.
//!
//! A resume reads the channel's stream with a short-lived consumer from `since_offset + 1` up to
//! the stream's last sequence at that moment (JetStream while it still holds the offset), and the
//! part older than the stream's first sequence from the PostgreSQL history the persister keeps
//! (same offsets: `events.stream_offset`). Live events arriving meanwhile are held by the hub and
//! released after the replay, deduplicated by offset. When neither source holds the offset, the
//! outcome is `recovered: false` and the subscription continues live from the head.

use crate::channel::{Channel, Routing};
use crate::hub::{Dispatch, Subscriber};
use crate::upstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures::StreamExt;
use runcast_contract::v1::Event;
use runcast_contract::{EntityId, StreamKind};
use runcast_runtime::nats::Nats;
use runcast_runtime::{Error, ErrorKind, postgres};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// How a replay went: whether the offset was still held somewhere, and how many events it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub recovered: bool,
    pub replayed: u64,
}

/// JetStream and the PostgreSQL history.
#[derive(Clone)]
pub struct Sources {
    pub nats: Nats,
    pub history: PgPool,
    /// Events read per round trip.
    pub batch: usize,
    /// Replays (and snapshots) running at once on this replica: a reconnect storm after a drain
    /// queues here instead of creating thousands of consumers at once.
    pub slots: Arc<Semaphore>,
}

fn unavailable(what: &str, err: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {err}"))
}

impl Sources {
    /// Waits for a replay slot; `None` when `cancel` fires first.
    pub async fn slot(&self, cancel: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = cancel.cancelled() => None,
            permit = self.slots.clone().acquire_owned() => permit.ok(),
        }
    }

    async fn stream(&self, kind: StreamKind) -> Result<async_nats::jetstream::stream::Stream, Error> {
        let name = self.nats.topology.stream_name(kind);
        self.nats
            .jetstream
            .get_stream(&name)
            .await
            .map_err(|err| unavailable(&format!("cannot open stream {name}"), err))
    }

    /// The last event of the channel's entity and its offset: the entity's current state
    /// (`None` for channels without an entity or an entity with no events yet).
    pub async fn snapshot(&self, tenant: &EntityId, channel: &Channel) -> Result<Option<(Routing, Event)>, Error> {
        let Some(entity) = channel.snapshot_entity() else {
            return Ok(None);
        };
        let kind = channel.stream();
        let stream = self.stream(kind).await?;
        let subject = self.nats.topology.entity_subject(kind, tenant, entity);
        match stream.direct_get_last_for_subject(subject.as_str()).await {
            Ok(message) => Ok(upstream::decode(kind, &message.subject, &message.payload, message.sequence)),
            Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(err) => Err(unavailable("cannot read the last event", err)),
        }
    }

    /// Replays everything the subscriber wants after `since`, through [`Subscriber::replayed`].
    pub async fn replay(
        &self,
        subscriber: &Subscriber,
        since: u64,
        cancel: &CancellationToken,
    ) -> Result<Outcome, Error> {
        let kind = subscriber.channel.stream();
        let stream = self.stream(kind).await?;
        let state = stream.get_info().await.map_err(|err| unavailable("cannot read the stream state", err))?.state;
        let (first, last) = (state.first_sequence, state.last_sequence);
        if since > last {
            // Beyond everything ever published: the client's position is not ours.
            return Ok(Outcome { recovered: false, replayed: 0 });
        }
        let mut replayed = 0;
        let mut after = since;
        if since.saturating_add(1) < first {
            if !self.history_reaches(kind, since).await? {
                return Ok(Outcome { recovered: false, replayed: 0 });
            }
            let (count, reached) = self.replay_history(subscriber, kind, since, first, cancel).await?;
            replayed += count;
            after = reached.max(first - 1);
        }
        if after < last {
            replayed += self.replay_stream(subscriber, &stream, after + 1, last, cancel).await?;
        }
        Ok(Outcome { recovered: true, replayed })
    }

    /// Whether the history goes back to `since + 1` on this stream.
    async fn history_reaches(&self, kind: StreamKind, since: u64) -> Result<bool, Error> {
        let oldest: Option<i64> = sqlx::query_scalar("SELECT min(stream_offset) FROM events WHERE stream = $1")
            .bind(kind.base_name())
            .fetch_one(&self.history)
            .await
            .map_err(|err| postgres::error("cannot read the history", err))?;
        Ok(oldest.is_some_and(|oldest| u64::try_from(oldest).is_ok_and(|oldest| oldest <= since.saturating_add(1))))
    }

    /// Pages through the history in offset order, from after `since` to before `before`.
    /// Returns the count sent and the last offset read.
    async fn replay_history(
        &self,
        subscriber: &Subscriber,
        kind: StreamKind,
        since: u64,
        before: u64,
        cancel: &CancellationToken,
    ) -> Result<(u64, u64), Error> {
        let (execution, agent, workflow) = match &subscriber.channel {
            Channel::Execution(id) | Channel::Logs(id) => (id.as_str(), "", ""),
            Channel::Agent(id) => ("", id.as_str(), ""),
            Channel::Workflow(id) => ("", "", id.as_str()),
            _ => ("", "", ""),
        };
        let mut cursor = i64::try_from(since).unwrap_or(i64::MAX);
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        let limit = i64::try_from(self.batch).unwrap_or(512);
        let mut sent = 0;
        loop {
            if cancel.is_cancelled() {
                return Ok((sent, u64::try_from(cursor).unwrap_or(0)));
            }
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT stream_offset, body FROM events \
                 WHERE stream = $1 AND tenant_id = $2 AND stream_offset > $3 AND stream_offset < $4 \
                   AND ($5 = '' OR execution_id = $5) AND ($6 = '' OR agent_id = $6) \
                   AND ($7 = '' OR workflow_id = $7) \
                 ORDER BY stream_offset LIMIT $8",
            )
            .bind(kind.base_name())
            .bind(subscriber.tenant.as_str())
            .bind(cursor)
            .bind(before)
            .bind(execution)
            .bind(agent)
            .bind(workflow)
            .bind(limit)
            .fetch_all(&self.history)
            .await
            .map_err(|err| postgres::error("cannot read the history", err))?;
            let page = rows.len();
            for (offset, body) in rows {
                cursor = offset;
                let offset = u64::try_from(offset).unwrap_or(0);
                let Some((routing, event)) = self.decode_history(kind, &body, offset) else {
                    continue;
                };
                if !subscriber.wants(&routing, &event) {
                    continue;
                }
                if !deliver(subscriber, &routing, &event, offset).await {
                    return Ok((sent, offset));
                }
                sent += 1;
            }
            if page < self.batch {
                return Ok((sent, u64::try_from(cursor).unwrap_or(0)));
            }
        }
    }

    /// History rows hold the event bytes, not the subject: rebuild the subject from the event.
    fn decode_history(&self, kind: StreamKind, body: &[u8], offset: u64) -> Option<(Routing, Event)> {
        use prost::Message as _;
        let event = Event::decode(body).ok()?;
        let tenant = EntityId::parse("tenant_id", &event.tenant_id).ok()?;
        let entity = match kind {
            StreamKind::Agents => &event.agent_id,
            _ => &event.execution_id,
        };
        let entity = EntityId::parse("entity", entity).ok()?;
        let subject = self.nats.topology.entity_subject(kind, &tenant, &entity);
        upstream::decode(kind, &subject, body, offset)
    }

    /// Reads the stream from `start` with a consumer of its own (no acks, deleted afterwards),
    /// until the stream's last sequence as of the start of the replay.
    async fn replay_stream(
        &self,
        subscriber: &Subscriber,
        stream: &async_nats::jetstream::stream::Stream,
        start: u64,
        last: u64,
        cancel: &CancellationToken,
    ) -> Result<u64, Error> {
        let kind = subscriber.channel.stream();
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
                ack_policy: AckPolicy::None,
                filter_subject: subscriber.channel.replay_subject(&self.nats.topology, &subscriber.tenant),
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|err| unavailable("cannot create a replay consumer", err))?;
        let name = consumer.cached_info().name.clone();
        let mut sent = 0;
        let mut done = consumer.cached_info().num_pending == 0;
        let result = async {
            while !done && !cancel.is_cancelled() {
                let mut batch = consumer
                    .fetch()
                    .max_messages(self.batch)
                    .messages()
                    .await
                    .map_err(|err| unavailable("cannot fetch from the stream", err))?;
                let mut received = 0;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|err| unavailable("cannot fetch from the stream", err))?;
                    received += 1;
                    let info = message.info().map_err(|err| Error::new(ErrorKind::Internal, err.to_string()))?;
                    let (offset, pending) = (info.stream_sequence, info.pending);
                    if let Some((routing, event)) = upstream::decode(kind, &message.subject, &message.payload, offset)
                        && subscriber.wants(&routing, &event)
                    {
                        if !deliver(subscriber, &routing, &event, offset).await {
                            return Ok(());
                        }
                        sent += 1;
                    }
                    if pending == 0 || offset >= last {
                        done = true;
                        break;
                    }
                }
                if received == 0 {
                    done = true;
                }
            }
            Ok::<(), Error>(())
        }
        .await;
        // Best effort: the consumer also expires on its own after its inactivity threshold.
        if let Err(err) = stream.delete_consumer(&name).await {
            tracing::debug!(cause = %err, "replay consumer not deleted; it will expire");
        }
        result.map(|()| sent)
    }
}

async fn deliver(subscriber: &Subscriber, routing: &Routing, event: &Event, offset: u64) -> bool {
    let Ok(data) = crate::protocol::event_data(event) else {
        return true; // skipped, like the live path does
    };
    subscriber.replayed(&Dispatch::new(routing, event, offset, data, None)).await
}
