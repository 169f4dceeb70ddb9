//! The event store is JetStream itself: the last event on an entity's subject is its current state
//! (every event carries the whole state), and appending is a publish guarded by
//! `Nats-Expected-Last-Subject-Sequence` (optimistic concurrency) with `Nats-Msg-Id` = event id
//! (a retried publish is deduplicated by the server), or the caller's request id scoped to the
//! entity when it gave one (a retried request is stored once: see [`EventStore::find_request`]).
//!
//! Each replica remembers the last event it wrote or read on the subjects it touched recently, so
//! the first try of a guarded append decides without a round trip to NATS. Only that first try
//! uses it: a stale entry (another replica or the sweeper wrote since, or retention dropped the
//! subject's events) fails the sequence check, and the retry reads the leader.

use async_nats::jetstream::{
    self, consumer,
    context::PublishErrorKind,
    stream::{DirectGetErrorKind, RawMessageErrorKind},
};
use futures::StreamExt as _;
use prost::Message as _;
use runcast_contract::v1::Event;
use runcast_contract::{EntityId, StreamKind, Topology};
use std::sync::Arc;
use std::time::Duration;

/// How long one store operation may take before it fails with `Unavailable`.
pub(crate) const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Someone appended to the subject since we read it: re-read and decide again.
    Conflict,
    /// NATS is unreachable or did not answer in time.
    Unavailable,
    /// A stored message does not decode, or NATS answered something unexpected.
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl From<StoreError> for crate::error::ApiError {
    fn from(err: StoreError) -> Self {
        match err.kind {
            StoreErrorKind::Conflict => Self::new(crate::error::ApiErrorKind::Aborted, err.message),
            StoreErrorKind::Unavailable => Self::unavailable(err.message),
            StoreErrorKind::Internal => Self::internal(err.message),
        }
    }
}

/// The last event of an entity and its stream sequence (also set as `event.offset`).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub event: Event,
    pub sequence: u64,
    /// Whether this is the newest acknowledged event for certain (see [`EventStore::is_exact`]); a
    /// remembered event never is.
    pub exact: bool,
    /// The fingerprint of the request that made the event, when it had a request id (see
    /// `domain::fingerprint`); `None` for events stored without one, or by an earlier release.
    pub fingerprint: Option<String>,
}

/// The header that carries a request's fingerprint with its event. Only the api reads it.
const FINGERPRINT_HEADER: &str = "Runcast-Request-Fingerprint";

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The new event's stream sequence, or the earlier one's when `duplicate`.
    pub sequence: u64,
    /// The stream already held an event with this one's message id (a retried request whose
    /// first try was stored): nothing was written.
    pub duplicate: bool,
}

/// The `Nats-Msg-Id` of an event: its caller's request id, scoped to the entity, when it has one
/// (so JetStream's duplicate window stores a retried request once), else the event's own id.
/// Ids have no '.', so the scoped form cannot collide across tenants or entities.
fn message_id(tenant: &EntityId, entity: &EntityId, event: &Event) -> String {
    if event.request_id.is_empty() { event.event_id.clone() } else { format!("{tenant}.{entity}.{}", event.request_id) }
}

/// How many events of one subject a look for an earlier request reads at most.
const MAX_LOOKBACK_EVENTS: usize = 10_000;

/// Look-backs one replica runs at once; more wait (within the operation timeout) for their turn.
const MAX_CONCURRENT_LOOKBACKS: usize = 8;
/// Of those, what one tenant may hold: a tenant flooding refused retries waits for its own turns
/// and leaves the others theirs.
const MAX_CONCURRENT_LOOKBACKS_PER_TENANT: usize = 2;
/// Tenants whose look-back turns are tracked (the least recently used forgotten beyond it).
const LOOKBACK_TENANTS: usize = 10_000;

/// Turns for look-backs: a few per replica, fewer per tenant.
#[derive(Debug)]
struct LookbackTurns {
    replica: Arc<tokio::sync::Semaphore>,
    tenants: quick_cache::sync::Cache<String, Arc<tokio::sync::Semaphore>>,
    per_tenant: usize,
}

impl LookbackTurns {
    fn new(replica: usize, per_tenant: usize) -> Self {
        Self {
            replica: Arc::new(tokio::sync::Semaphore::new(replica)),
            tenants: quick_cache::sync::Cache::new(LOOKBACK_TENANTS),
            per_tenant,
        }
    }

    /// Waits for a turn of `tenant`'s, then one of the replica's: held until both are dropped.
    async fn take(
        &self,
        tenant: &str,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit), tokio::sync::AcquireError> {
        let own = self
            .tenants
            .get_or_insert_with(tenant, || {
                Ok::<_, std::convert::Infallible>(Arc::new(tokio::sync::Semaphore::new(self.per_tenant)))
            })
            .unwrap_or_else(|never| match never {});
        let own = own.acquire_owned().await?;
        let shared = self.replica.clone().acquire_owned().await?;
        Ok((own, shared))
    }
}

/// Subjects' last events (their `offset` set) as this replica last wrote or read them, the least
/// recently used forgotten beyond the capacity.
type LastEvents = quick_cache::sync::Cache<String, Arc<Stored>>;

#[derive(Clone, Debug)]
pub struct EventStore {
    jetstream: jetstream::Context,
    topology: Topology,
    /// Streams have more than one replica: a direct get may be answered by a follower that has not
    /// applied the newest events yet.
    replicated: bool,
    /// `None`: remembering is off (capacity 0).
    remembered: Option<Arc<LastEvents>>,
    /// Look-backs for an earlier request in flight: each makes a consumer on the server, so a
    /// flood of refused retries cannot make thousands at once.
    lookbacks: Arc<LookbackTurns>,
}

/// How fresh a read of a subject's last event must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// What this replica last wrote or read on the subject while it remembers it, else any
    /// replica answers (JetStream direct get, which on a cluster may trail the newest event by a
    /// few milliseconds). Possibly stale either way: only for the first try of a guarded append,
    /// where a stale read fails the expected-sequence check instead of deciding wrong.
    Remembered,
    /// What this replica remembers of the subject, else "no events" without asking NATS: for the
    /// first try of a create, whose append expects an empty subject, so a subject that has events
    /// after all fails the expected-sequence check and the retry reads the leader.
    RememberedOrEmpty,
    /// The stream leader answers: the newest acknowledged event. For what callers are told (state,
    /// `NOT_FOUND`, refusals) and for retries after a conflict.
    Leader,
}

impl EventStore {
    /// `remember`: how many subjects' last events to keep for [`Read::Remembered`] (0: none).
    pub fn new(jetstream: jetstream::Context, topology: Topology, replicas: u8, remember: usize) -> Self {
        let remembered = (remember > 0).then(|| Arc::new(LastEvents::new(remember)));
        let lookbacks = Arc::new(LookbackTurns::new(MAX_CONCURRENT_LOOKBACKS, MAX_CONCURRENT_LOOKBACKS_PER_TENANT));
        Self { jetstream, topology, replicated: replicas > 1, remembered, lookbacks }
    }

    /// Whether a read of this kind answered from NATS sees the newest acknowledged event.
    pub fn is_exact(&self, read: Read) -> bool {
        match read {
            Read::Leader => true,
            Read::Remembered => !self.replicated,
            Read::RememberedOrEmpty => false,
        }
    }

    /// Keeps `stored` as the subject's last.
    fn remember(&self, subject: &str, stored: Stored) {
        let Some(cache) = self.remembered.as_ref() else { return };
        // Two requests of this replica may finish out of order: keep the newer of the two.
        if cache.get(subject).is_some_and(|known| known.sequence >= stored.sequence) {
            return;
        }
        cache.insert(subject.to_owned(), Arc::new(Stored { exact: false, ..stored }));
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    pub fn subject(&self, kind: StreamKind, tenant: &EntityId, entity: &EntityId) -> String {
        self.topology.entity_subject(kind, tenant, entity)
    }

    /// The last event on an entity's subject, or `None` when it has none.
    pub async fn last(
        &self,
        kind: StreamKind,
        tenant: &EntityId,
        entity: &EntityId,
        read: Read,
    ) -> Result<Option<Stored>, StoreError> {
        let subject = self.subject(kind, tenant, entity);
        if matches!(read, Read::Remembered | Read::RememberedOrEmpty) {
            if let Some(known) = self.remembered.as_ref().and_then(|cache| cache.get(&subject)) {
                return Ok(Some(known.as_ref().clone()));
            }
            if read == Read::RememberedOrEmpty {
                return Ok(None);
            }
        }
        let message = match self.fetch(kind, &subject, Fetch::LastOf(&subject), read).await? {
            Some(message) => message,
            None => return Ok(None),
        };
        let stored = decode(&subject, &message, self.is_exact(read))?;
        self.remember(&subject, stored.clone());
        Ok(Some(stored))
    }

    /// The event a retried request's first try stored at `sequence` of `kind`'s stream (what an
    /// append answered as a duplicate), read from the leader.
    pub async fn earlier_try(&self, kind: StreamKind, sequence: u64) -> Result<Stored, StoreError> {
        let what = format!("sequence {sequence} of {}", self.topology.stream_name(kind));
        match self.fetch(kind, &what, Fetch::Sequence(sequence), Read::Leader).await? {
            Some(message) => decode(&what, &message, true),
            None => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{what}, an earlier try of this request, is no longer in the stream"),
            )),
        }
    }

    /// One message of `kind`'s stream, `None` when there is none.
    async fn fetch(
        &self,
        kind: StreamKind,
        what: &str,
        target: Fetch<'_>,
        read: Read,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, StoreError> {
        let stream_name = self.topology.stream_name(kind);
        let fetch = async {
            let stream = self.jetstream.get_stream_no_info(&stream_name).await.map_err(|err| {
                StoreError::new(StoreErrorKind::Unavailable, format!("cannot reach stream {stream_name}: {err}"))
            })?;
            // With one replica every direct get is answered by the leader: the cheaper call is exact.
            if !self.replicated || read != Read::Leader {
                let direct = match target {
                    Fetch::LastOf(subject) => stream.direct_get_last_for_subject(subject).await,
                    Fetch::Sequence(sequence) => stream.direct_get(sequence).await,
                };
                return match direct {
                    Ok(message) => Ok(Some(message)),
                    Err(err) if matches!(err.kind(), DirectGetErrorKind::NotFound) => Ok(None),
                    Err(err) => Err(read_error(what, &err)),
                };
            }
            let leader = match target {
                Fetch::LastOf(subject) => stream.raw_message_builder().last_by_subject(subject).send().await,
                Fetch::Sequence(sequence) => stream.raw_message_builder().sequence(sequence).send().await,
            };
            match leader {
                Ok(message) => Ok(Some(message)),
                Err(err) if matches!(err.kind(), RawMessageErrorKind::NoMessageFound) => Ok(None),
                Err(err) => Err(leader_read_error(what, &err)),
            }
        };
        tokio::time::timeout(OPERATION_TIMEOUT, fetch).await.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("NATS did not answer reading {what} within {OPERATION_TIMEOUT:?}"),
            )
        })?
    }

    /// The event of an entity whose caller gave `request_id`, among the events stored in the last
    /// `window` (JetStream's duplicate window: a retry within it is stored once, and this finds the
    /// first try for a retry that the state machine refuses before appending). Reads the subject
    /// with a short-lived consumer, at most [`MAX_LOOKBACK_EVENTS`] events.
    pub async fn find_request(
        &self,
        kind: StreamKind,
        tenant: &EntityId,
        entity: &EntityId,
        request_id: &str,
        window: Duration,
    ) -> Result<Option<Stored>, StoreError> {
        let subject = self.subject(kind, tenant, entity);
        let stream_name = self.topology.stream_name(kind);
        let unavailable = |err: &dyn std::fmt::Display| lookback_unavailable(&subject, err);
        let look = async {
            let _turn = self.lookbacks.take(tenant.as_str()).await.map_err(|err| unavailable(&err))?;
            let stream = self.jetstream.get_stream_no_info(&stream_name).await.map_err(|err| unavailable(&err))?;
            let start_time = time::OffsetDateTime::now_utc() - window;
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    filter_subject: subject.clone(),
                    deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
                    ack_policy: consumer::AckPolicy::None,
                    memory_storage: true,
                    num_replicas: 1,
                    inactive_threshold: OPERATION_TIMEOUT,
                    ..Default::default()
                })
                .await
                .map_err(|err| unavailable(&err))?;
            let found = scan_for_request(&consumer, &subject, request_id).await;
            // Gone by itself after its inactive threshold; deleting it now keeps a burst of
            // look-backs from piling consumers up on the server.
            let name = consumer.cached_info().name.clone();
            if let Err(err) = stream.delete_consumer(&name).await {
                tracing::debug!(cause = %err, consumer = %name, "cannot delete a look-back consumer; it expires");
            }
            found
        };
        tokio::time::timeout(OPERATION_TIMEOUT, look).await.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("NATS did not answer a look back through {subject} within {OPERATION_TIMEOUT:?}"),
            )
        })?
    }

    /// Appends `event` to its entity's subject if the subject's last sequence is still
    /// `expected_last` (0: the subject must be empty). `fingerprint`: of the request that made it,
    /// stored with it when the request has an id, for its retries to be compared with.
    pub async fn append(
        &self,
        kind: StreamKind,
        tenant: &EntityId,
        entity: &EntityId,
        mut event: Event,
        expected_last: u64,
        fingerprint: Option<String>,
    ) -> Result<Appended, StoreError> {
        let subject = self.subject(kind, tenant, entity);
        // The trace of the request travels with the event to the persister and the gateways.
        let mut headers = async_nats::HeaderMap::new();
        runcast_runtime::telemetry::trace_context::inject_current(&mut headers);
        if let Some(fingerprint) = &fingerprint {
            headers.insert(FINGERPRINT_HEADER, fingerprint.as_str());
        }
        let publish = jetstream::message::PublishMessage::build()
            .headers(headers)
            .payload(event.encode_to_vec().into())
            .message_id(message_id(tenant, entity, &event))
            .expected_last_subject_sequence(expected_last);
        let send = async {
            let ack = self
                .jetstream
                .send_publish(subject.clone(), publish)
                .await
                .map_err(|err| publish_error(&subject, err))?;
            ack.await.map_err(|err| publish_error(&subject, err))
        };
        let ack = tokio::time::timeout(OPERATION_TIMEOUT, send)
            .await
            .map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!(
                        "NATS did not acknowledge the event on {subject} within {OPERATION_TIMEOUT:?}: is NATS up?"
                    ),
                )
            })
            .and_then(|acked| acked)
            .inspect_err(|err| {
                // Whatever this replica remembers of the subject is stale, or may be (a stream created
                // anew numbers from 1 again): the retry's read replaces it.
                if err.kind() == StoreErrorKind::Conflict
                    && let Some(cache) = self.remembered.as_ref()
                {
                    cache.remove(&subject);
                }
            })?;
        if ack.duplicate && ack.sequence == 0 {
            // A clustered stream staged the same message id for another try that is not stored
            // yet (two tries of one request at once): read again, and find it.
            return Err(StoreError::new(StoreErrorKind::Conflict, in_process(&subject)));
        }
        if !ack.duplicate {
            set_offset(&mut event, ack.sequence);
            self.remember(&subject, Stored { event, sequence: ack.sequence, exact: false, fingerprint });
        }
        Ok(Appended { sequence: ack.sequence, duplicate: ack.duplicate })
    }
}

/// Reads the consumer's events until one carries `request_id`, the consumer has no more, or
/// [`MAX_LOOKBACK_EVENTS`] were read.
async fn scan_for_request(
    consumer: &consumer::Consumer<consumer::pull::Config>,
    subject: &str,
    request_id: &str,
) -> Result<Option<Stored>, StoreError> {
    let unavailable = |err: &dyn std::fmt::Display| lookback_unavailable(subject, err);
    let mut scanned = 0;
    while scanned < MAX_LOOKBACK_EVENTS {
        // A fetch answers what is there now and ends: no waiting for events that never come.
        let mut batch = consumer.fetch().max_messages(256).messages().await.map_err(|err| unavailable(&err))?;
        let mut pending = 0;
        let mut received = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|err| unavailable(&err))?;
            let info = message.info().map_err(|err| unavailable(&err))?;
            let (sequence, left) = (info.stream_sequence, info.pending);
            let stored = decode_payload(subject, &message.payload, message.headers.as_ref(), sequence, true)?;
            received += 1;
            pending = left;
            if stored.event.request_id == request_id {
                return Ok(Some(stored));
            }
        }
        scanned += received;
        if received == 0 || pending == 0 {
            break;
        }
    }
    Ok(None)
}

fn lookback_unavailable(subject: &str, err: &dyn std::fmt::Display) -> StoreError {
    StoreError::new(StoreErrorKind::Unavailable, format!("cannot look back through {subject}: {err}"))
}

/// Which message [`EventStore::fetch`] reads.
#[derive(Debug, Clone, Copy)]
enum Fetch<'a> {
    LastOf(&'a str),
    Sequence(u64),
}

fn decode(
    what: &str,
    message: &async_nats::jetstream::message::StreamMessage,
    exact: bool,
) -> Result<Stored, StoreError> {
    decode_payload(what, &message.payload, Some(&message.headers), message.sequence, exact)
}

/// An event as stored at `sequence`, its offset set.
fn decode_payload(
    what: &str,
    payload: &[u8],
    headers: Option<&async_nats::HeaderMap>,
    sequence: u64,
    exact: bool,
) -> Result<Stored, StoreError> {
    let mut event = Event::decode(payload).map_err(|err| {
        StoreError::new(StoreErrorKind::Internal, format!("event {sequence} on {what} does not decode: {err}"))
    })?;
    set_offset(&mut event, sequence);
    let fingerprint =
        headers.and_then(|headers| headers.get(FINGERPRINT_HEADER)).map(|value| value.as_str().to_owned());
    Ok(Stored { event, sequence, exact, fingerprint })
}

/// The stream sequence an event was stored at, in the event and in the state it carries.
fn set_offset(event: &mut Event, sequence: u64) {
    event.offset = sequence;
    match event.state.as_mut() {
        Some(runcast_contract::v1::event::State::Execution(execution)) => execution.offset = sequence,
        Some(runcast_contract::v1::event::State::Agent(agent)) => agent.offset = sequence,
        None => {}
    }
}

/// A failed read of a subject's last event. No responders means the server is up but JetStream is
/// not (restarting, or a stream leader being elected): a wait, not a bug.
fn read_error(subject: &str, err: &jetstream::stream::DirectGetError) -> StoreError {
    let unavailable = match err.kind() {
        DirectGetErrorKind::TimedOut | DirectGetErrorKind::Request => true,
        DirectGetErrorKind::ErrorResponse(code, _) => code == async_nats::StatusCode::NO_RESPONDERS,
        _ => false,
    };
    if unavailable {
        StoreError::new(StoreErrorKind::Unavailable, format!("NATS did not answer reading {subject}: {err}"))
    } else {
        StoreError::new(StoreErrorKind::Internal, format!("cannot read {subject}: {err}"))
    }
}

/// A failed read through the stream leader: anything but a malformed subject is the cluster
/// being unreachable or electing a leader.
fn leader_read_error(subject: &str, err: &jetstream::stream::RawMessageError) -> StoreError {
    match err.kind() {
        RawMessageErrorKind::InvalidSubject => {
            StoreError::new(StoreErrorKind::Internal, format!("cannot read {subject}: {err}"))
        }
        _ => StoreError::new(
            StoreErrorKind::Unavailable,
            format!("the stream leader did not answer reading {subject}: {err}"),
        ),
    }
}

/// The message of a conflict with another try of the same request, still being stored.
fn in_process(subject: &str) -> String {
    format!("another try of this request on {subject} is being stored")
}

fn publish_error(subject: &str, err: jetstream::context::PublishError) -> StoreError {
    let api_error = std::error::Error::source(&err).and_then(|source| source.downcast_ref::<jetstream::Error>());
    if api_error.is_some_and(|api| api.error_code() == jetstream::ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT) {
        return StoreError::new(StoreErrorKind::Conflict, in_process(subject));
    }
    match err.kind() {
        PublishErrorKind::WrongLastSequence => {
            StoreError::new(StoreErrorKind::Conflict, format!("{subject} changed concurrently"))
        }
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => StoreError::new(
            StoreErrorKind::Unavailable,
            format!("NATS is unavailable (publishing to {subject}): {err}"),
        ),
        PublishErrorKind::StreamNotFound => StoreError::new(
            StoreErrorKind::Unavailable,
            format!("no stream captures {subject} yet: streams are still being provisioned"),
        ),
        _ => StoreError::new(StoreErrorKind::Internal, format!("publishing to {subject} failed: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::stream::DirectGetError;

    #[tokio::test]
    async fn a_tenant_holding_its_look_back_turns_leaves_the_others_theirs() {
        let turns = LookbackTurns::new(3, 2);
        let (first, second) = (turns.take("flood").await.expect("turn"), turns.take("flood").await.expect("turn"));
        let third = turns.take("flood");
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending(), "a tenant's third look-back waits for its own turn");
        let other = turns.take("quiet").await.expect("another tenant still gets one");
        let fourth = turns.take("other");
        tokio::pin!(fourth);
        assert!(futures::poll!(fourth.as_mut()).is_pending(), "the replica's three turns are taken");
        // A turn given back goes to whoever waited for the replica first: the other tenant.
        drop(first);
        let fourth = futures::poll!(fourth.as_mut());
        assert!(fourth.is_ready(), "the first in line for the replica's turn");
        assert!(futures::poll!(third.as_mut()).is_pending(), "its tenant's turn is free, the replica's is taken");
        drop(other);
        assert!(futures::poll!(third.as_mut()).is_ready());
        drop((second, fourth));
    }

    #[test]
    fn jetstream_not_answering_is_unavailable_anything_else_internal() {
        let cases = [
            (
                DirectGetErrorKind::ErrorResponse(async_nats::StatusCode::NO_RESPONDERS, "no responders".into()),
                StoreErrorKind::Unavailable,
            ),
            (DirectGetErrorKind::TimedOut, StoreErrorKind::Unavailable),
            (DirectGetErrorKind::Request, StoreErrorKind::Unavailable),
            (
                DirectGetErrorKind::ErrorResponse(async_nats::StatusCode::from_u16(500).expect("code"), "boom".into()),
                StoreErrorKind::Internal,
            ),
            (DirectGetErrorKind::InvalidSubject, StoreErrorKind::Internal),
        ];
        for (kind, expected) in cases {
            let err = read_error("exec.acme.e1", &DirectGetError::new(kind.clone()));
            assert_eq!(err.kind(), expected, "{kind:?}");
        }
        let leader = |kind| leader_read_error("exec.acme.e1", &jetstream::stream::RawMessageError::new(kind)).kind();
        assert_eq!(leader(RawMessageErrorKind::Other), StoreErrorKind::Unavailable);
        assert_eq!(leader(RawMessageErrorKind::InvalidSubject), StoreErrorKind::Internal);
        let unavailable: crate::error::ApiError =
            read_error("exec.acme.e1", &DirectGetError::new(DirectGetErrorKind::TimedOut)).into();
        // Two tries of one request at once on a clustered stream: the second reads again.
        let api = |code: u64| -> jetstream::Error {
            serde_json::from_value(serde_json::json!({"code": 409, "err_code": code, "description": "…"}))
                .expect("error")
        };
        let publish =
            |kind, code| publish_error("exec.acme.e1", jetstream::context::PublishError::with_source(kind, api(code)));
        assert_eq!(publish(PublishErrorKind::Other, 10158).kind(), StoreErrorKind::Conflict);
        assert_eq!(publish(PublishErrorKind::Other, 10999).kind(), StoreErrorKind::Internal);
        assert_eq!(publish(PublishErrorKind::WrongLastSequence, 10071).kind(), StoreErrorKind::Conflict);
        assert_eq!(unavailable.kind(), crate::error::ApiErrorKind::Unavailable);
    }
}
