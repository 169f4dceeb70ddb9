//! Writes: read the execution's last event, let the state machine decide, append the next event
//! with compare-and-set on the subject's sequence, and on a lost race read again — a bounded number
//! of times, then `ABORTED`. The first read may be what this replica remembers of its own last
//! write (see [`crate::store`]); correctness never rests on it, so any number of replicas may run.
//!
//! An execution outlives the stream (DESIGN §7): once the stream has aged out its events, its
//! latest state is the read model's, and the next write publishes with expected last subject
//! sequence 0 — an empty subject — so two racing writers still cannot both win.

use crate::archived::ArchivedExecutions;
use crate::domain::state_machine::{Command, Refusal, decide};
use crate::error::{ApiError, ApiErrorKind};
use crate::series::FirstTry;
use crate::store::{EventStore, Read, StoreErrorKind, Stored};
use prost_types::Timestamp;
use runcast_contract::v1::{Event, Execution, event};
use runcast_contract::{EntityId, StreamKind};
use sha2::{Digest, Sha256};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Attempts of read-decide-append before a contended write gives up with `ABORTED`.
pub(crate) const MAX_ATTEMPTS: u32 = 10;

pub(crate) fn now() -> Timestamp {
    runcast_contract::json::from_datetime(chrono::Utc::now())
}

/// The id of an execution created with an idempotency key: derived from tenant and key, so every
/// replica, before or after a restart, and long after the broker's duplicate window, maps the same
/// key to the same execution — and the create's compare-and-set lets only one of them create it.
pub(crate) fn execution_id_for_key(tenant: &EntityId, key: &str) -> EntityId {
    let digest = Sha256::digest(format!("{tenant}\0{key}").as_bytes());
    let id = format!("idem-{}", &hex::encode(digest)[..40]);
    EntityId::parse("execution_id", &id).unwrap_or_else(|_| unreachable!("hex digits are valid id characters"))
}

pub(crate) fn new_execution_id() -> EntityId {
    let id = uuid::Uuid::now_v7().to_string();
    EntityId::parse("execution_id", &id).unwrap_or_else(|_| unreachable!("a UUID is a valid id"))
}

fn execution_of(stored: &Stored) -> Option<&Execution> {
    match stored.event.state.as_ref() {
        Some(event::State::Execution(execution)) => Some(execution),
        _ => None,
    }
}

/// How long the read model may take to answer for an execution the stream no longer holds.
const READ_MODEL_TIMEOUT: Duration = Duration::from_secs(2);

/// An execution's latest state and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub execution: Execution,
    /// The subject sequence the next write must expect: the last event's, or 0 when the stream no
    /// longer holds any event of the execution (the state is the read model's).
    pub expected_sequence: u64,
    /// The last event, when the stream still holds it.
    pub last_event: Option<Event>,
    /// The fingerprint of the request that made it, if it had a request id.
    pub fingerprint: Option<String>,
    /// Whether this is the newest state for certain (else a decision on it is confirmed by the
    /// sequence check of the append, or a refusal by a read of the leader).
    pub exact: bool,
}

/// Whether (and how strictly) an empty subject is looked up in the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fallback {
    /// A fresh id: nothing can be in the read model.
    None,
    /// An idempotent create: an unreachable read model must not block creating.
    IfReachable,
    /// Everything else: an unreachable read model is `UNAVAILABLE`, never `NOT_FOUND`.
    Required,
}

/// What a caller attaches to a change besides the command.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteOptions {
    /// The change applies only if the execution is at this version.
    pub expected_version: Option<u64>,
    /// The caller's id for this change: a retry with the same id (the answer to the first try was
    /// lost) applies it once and answers the execution as the first try left it.
    pub request_id: Option<EntityId>,
}

/// The answer to a request sent again with its `request_id`: its first try's, if it is the same
/// change (same fingerprint), else `INVALID_ARGUMENT` — the id was reused for another change, which
/// answered by the first would be lost without a word. A first try stored without a fingerprint
/// (by an earlier release) is taken as the same.
pub(crate) fn answered_by(
    first: &Event,
    first_fingerprint: Option<&str>,
    request_id: &str,
    fingerprint: &str,
) -> Result<(), ApiError> {
    if first_fingerprint.is_none_or(|first| first == fingerprint) {
        return Ok(());
    }
    metrics::counter!("runcast_api_request_ids_reused_total").increment(1);
    let what = runcast_contract::v1::EventType::try_from(first.r#type)
        .map_or("an event of an unknown type", runcast_contract::WireEnum::wire_name);
    Err(ApiError::invalid(
        "request_id",
        format!(
            "{request_id:?} was first sent with another change ({what}, offset {}): a retry must repeat its first \
             try; a new change needs a new request_id",
            first.offset
        ),
    ))
}

/// Random jitter between retries so racing writers spread out.
fn backoff(attempt: u32) -> Duration {
    let jitter = RandomState::new().hash_one(attempt) % 4;
    Duration::from_millis(u64::from(attempt) * 2 + jitter)
}

#[derive(Clone, Debug)]
pub struct Executions {
    store: EventStore,
    /// The read model, consulted only when the stream no longer holds an execution an
    /// idempotent create names (its events aged out of the stream).
    read_model: Option<runcast_store::PgPool>,
    /// Its lookups of single executions, batched.
    archived: Option<ArchivedExecutions>,
    /// How long the streams keep an event (`RUNCAST_STREAM_MAX_AGE`).
    stream_max_age: Duration,
    /// How long JetStream remembers a message id (`RUNCAST_STREAM_DUPLICATE_WINDOW`): how long a
    /// request id makes a retry safe.
    duplicate_window: Duration,
}

/// The streams' default duplicate window, for an `Executions` built without one.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

impl Executions {
    pub fn new(store: EventStore) -> Self {
        Self {
            store,
            read_model: None,
            archived: None,
            stream_max_age: Duration::MAX,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }
    }

    /// Starts the task that batches read-model lookups: call it on a Tokio runtime.
    pub fn with_read_model(store: EventStore, pool: runcast_store::PgPool, stream_max_age: Duration) -> Self {
        let archived = ArchivedExecutions::spawn(pool.clone(), READ_MODEL_TIMEOUT);
        Self {
            store,
            read_model: Some(pool),
            archived: Some(archived),
            stream_max_age,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }
    }

    /// The streams' duplicate window, within which a request id makes a retry safe.
    pub fn with_duplicate_window(self, duplicate_window: Duration) -> Self {
        Self { duplicate_window, ..self }
    }

    pub fn read_model(&self) -> Option<&runcast_store::PgPool> {
        self.read_model.as_ref()
    }

    /// Whether some of the execution's events may have aged out of the streams.
    pub fn older_than_the_stream(&self, execution: &Execution) -> bool {
        let horizon = chrono::Duration::from_std(self.stream_max_age)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age));
        let Some(horizon) = horizon else { return false };
        let created = execution.created_at.and_then(|at| runcast_contract::json::to_datetime(&at).ok());
        created.is_none_or(|created| created < horizon)
    }

    /// The execution as the read model last saw it (`offset` = its last applied event), `None`
    /// when it is not there. PostgreSQL down or slow: `UNAVAILABLE`.
    async fn archived(&self, tenant: &EntityId, execution_id: &EntityId) -> Result<Option<Execution>, ApiError> {
        let Some(archived) = self.archived.as_ref() else { return Ok(None) };
        // No schema yet (no persister has run) reads as `None`: nothing can have been archived.
        let query = archived.get(tenant, execution_id);
        let unavailable = |cause: &dyn std::fmt::Display| {
            ApiError::unavailable(format!(
                "the stream no longer holds execution {execution_id} and the read model (PostgreSQL) cannot be \
                 read ({cause}): retry when PostgreSQL is back"
            ))
        };
        match tokio::time::timeout(READ_MODEL_TIMEOUT, query).await {
            Ok(Ok(execution)) => Ok(execution),
            Ok(Err(err)) if err.kind() == runcast_store::ErrorKind::Corrupt => Err(ApiError::internal(err.to_string())),
            Ok(Err(err)) => Err(unavailable(&err)),
            Err(_) => Err(unavailable(&format!("no answer within {READ_MODEL_TIMEOUT:?}"))),
        }
    }

    /// The execution's latest state: from its subject while the stream holds it, else from the
    /// read model as `fallback` allows.
    async fn current_with(
        &self,
        tenant: &EntityId,
        execution_id: &EntityId,
        fallback: Fallback,
        read: Read,
    ) -> Result<Option<Current>, ApiError> {
        if let Some(stored) = self.store.last(StreamKind::Executions, tenant, execution_id, read).await? {
            let execution = execution_of(&stored).cloned().ok_or_else(|| {
                ApiError::internal(format!("the last event of execution {execution_id} has no state"))
            })?;
            return Ok(Some(Current {
                execution,
                expected_sequence: stored.sequence,
                exact: stored.exact,
                last_event: Some(stored.event),
                fingerprint: stored.fingerprint,
            }));
        }
        let archived = match fallback {
            Fallback::None => None,
            Fallback::Required => self.archived(tenant, execution_id).await?,
            Fallback::IfReachable => self.archived(tenant, execution_id).await.unwrap_or_else(|err| {
                tracing::warn!(cause = %err, %execution_id, "cannot check the read model for an earlier create; creating");
                None
            }),
        };
        let exact = self.store.is_exact(read);
        Ok(archived.map(|execution| Current {
            execution,
            expected_sequence: 0,
            last_event: None,
            fingerprint: None,
            exact,
        }))
    }

    /// The execution's latest state, from the stream or (once aged out) the read model.
    pub async fn current(&self, tenant: &EntityId, execution_id: &EntityId) -> Result<Option<Current>, ApiError> {
        self.current_with(tenant, execution_id, Fallback::Required, Read::Leader).await
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The current state, straight from the stream (read-your-writes on any replica), or from the
    /// read model once the stream has aged the execution's events out.
    pub async fn get(&self, tenant: &EntityId, execution_id: &EntityId) -> Result<Execution, ApiError> {
        self.current(tenant, execution_id)
            .await?
            .map(|current| current.execution)
            .ok_or_else(|| ApiError::not_found(format!("execution {execution_id}")))
    }

    /// Applies `command` to the execution, as `options` allow. A `Create` of an execution that
    /// exists returns it unchanged (idempotency).
    pub async fn execute(
        &self,
        tenant: &EntityId,
        execution_id: &EntityId,
        command: Command,
        options: WriteOptions,
    ) -> Result<Execution, ApiError> {
        let name = command.name();
        let started = std::time::Instant::now();
        let outcome = self.decide_and_append(tenant, execution_id, command, options).await;
        let result = match &outcome {
            Ok(_) => "ok",
            Err(err) => err.code_name(),
        };
        metrics::counter!("runcast_api_commands_total", "command" => name, "outcome" => result).increment(1);
        metrics::histogram!("runcast_api_command_seconds", "command" => name).record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn decide_and_append(
        &self,
        tenant: &EntityId,
        execution_id: &EntityId,
        command: Command,
        options: WriteOptions,
    ) -> Result<Execution, ApiError> {
        let WriteOptions { expected_version, request_id } = options;
        let fingerprint = request_id.as_ref().map(|_| command.fingerprint());
        // The caller's id for this change and the change's fingerprint, when it gave one.
        let request = request_id.as_ref().zip(fingerprint.as_deref());
        // An idempotency key maps to its execution "for as long as it exists": also after the
        // stream dropped its events, when only the read model still has it.
        let fallback = match &command {
            Command::Create { idempotency_key, .. } if idempotency_key.is_empty() => Fallback::None,
            Command::Create { .. } => Fallback::IfReachable,
            _ => Fallback::Required,
        };
        // The first read may be remembered, or come from a replica that trails the leader: a stale
        // state fails the append's sequence check, and a refusal is confirmed against the leader
        // before it is given. A create guesses a new execution (no events) unless this replica
        // remembers otherwise: an idempotency key sent again fails the append on the empty-subject
        // check, and the retry finds its execution. (The read model is still asked first, for an
        // execution whose events the stream no longer holds.)
        let mut read = match &command {
            Command::Create { .. } => Read::RememberedOrEmpty,
            _ => Read::Remembered,
        };
        for attempt in 0..MAX_ATTEMPTS {
            let latest = self.current_with(tenant, execution_id, fallback, read).await?;
            let current = latest.as_ref().map(|latest| &latest.execution);
            let confirmed = latest.as_ref().map_or(self.store.is_exact(read), |latest| latest.exact);
            read = Read::Leader;
            // A retry whose first try is the execution's last event: answered without a change.
            if let (Some((request_id, fingerprint)), Some(latest)) = (request, &latest)
                && let Some(last) = latest.last_event.as_ref().filter(|last| last.request_id == request_id.as_str())
            {
                answered_by(last, latest.fingerprint.as_deref(), request_id.as_str(), fingerprint)?;
                FirstTry::Last.count();
                return Ok(latest.execution.clone());
            }
            if let (Some(expected), Some(current)) = (expected_version, current)
                && current.version != expected
            {
                if !confirmed {
                    continue;
                }
                if let Some(earlier) = self.earlier_request(tenant, execution_id, Some(current), request).await? {
                    return Ok(earlier);
                }
                return Err(ApiError::new(
                    ApiErrorKind::Aborted,
                    format!(
                        "execution {execution_id} is at version {}, not {expected}: reload it and decide again",
                        current.version
                    ),
                ));
            }
            let now = now();
            let change = match decide(current, &command, now) {
                Ok(change) => change,
                Err(_) if !confirmed => continue,
                // A retry whose first try changed the execution so that it now refuses the same
                // command (running → running): the first try's answer, if it was within the window.
                Err(refusal)
                    if request_id.is_some() && !matches!(refusal, Refusal::AlreadyExists | Refusal::NotFound) =>
                {
                    match self.earlier_request(tenant, execution_id, current, request).await? {
                        Some(earlier) => return Ok(earlier),
                        None => return Err(refusal.into()),
                    }
                }
                Err(Refusal::AlreadyExists) => {
                    return current.cloned().ok_or_else(|| ApiError::internal("an existing execution has no state"));
                }
                Err(Refusal::NotFound) => return Err(ApiError::not_found(format!("execution {execution_id}"))),
                Err(refusal) => return Err(refusal.into()),
            };
            let mut state = change.state;
            let event = Event {
                event_id: uuid::Uuid::now_v7().to_string(),
                tenant_id: tenant.to_string(),
                execution_id: execution_id.to_string(),
                workflow_id: state.workflow_id.clone(),
                agent_id: state.agent_id.clone(),
                version: state.version,
                occurred_at: Some(now),
                r#type: change.event_type.into(),
                payload: Some(change.payload),
                state: Some(event::State::Execution(state.clone())),
                request_id: request_id.as_ref().map(ToString::to_string).unwrap_or_default(),
                ..Default::default()
            };
            let expected_sequence = latest.as_ref().map_or(0, |latest| latest.expected_sequence);
            let appending = self.store.append(
                StreamKind::Executions,
                tenant,
                execution_id,
                event,
                expected_sequence,
                fingerprint.clone(),
            );
            match appending.await {
                Ok(appended) if appended.duplicate => {
                    let earlier = self.stored_execution(appended.sequence, request).await?;
                    FirstTry::Duplicate.count();
                    return Ok(earlier);
                }
                Ok(appended) => {
                    state.offset = appended.sequence;
                    return Ok(state);
                }
                Err(err) if err.kind() == StoreErrorKind::Conflict => {
                    metrics::counter!("runcast_api_write_conflicts_total").increment(1);
                    tracing::debug!(%execution_id, attempt, "lost a race; reading again");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Err(ApiError::new(
            ApiErrorKind::Aborted,
            format!(
                "execution {execution_id} changed {MAX_ATTEMPTS} times while this request tried to change it: retry"
            ),
        ))
    }
}

impl Executions {
    /// The execution as the event of an earlier try of `request_id` left it, if the stream stored
    /// one within the duplicate window. Only an execution that changed within the window is looked
    /// through: a refused command on one that did not (a worker reporting on an execution finished
    /// long ago) costs no look-back.
    async fn earlier_request(
        &self,
        tenant: &EntityId,
        execution_id: &EntityId,
        current: Option<&Execution>,
        request: Option<(&EntityId, &str)>,
    ) -> Result<Option<Execution>, ApiError> {
        let Some((request_id, fingerprint)) = request else { return Ok(None) };
        let updated_at = current.and_then(|current| current.updated_at.as_ref());
        if !changed_within(updated_at, chrono::Utc::now(), self.duplicate_window) {
            return Ok(None);
        }
        let found = self
            .store
            .find_request(StreamKind::Executions, tenant, execution_id, request_id.as_str(), self.duplicate_window)
            .await?;
        let Some(found) = found else { return Ok(None) };
        answered_by(&found.event, found.fingerprint.as_deref(), request_id.as_str(), fingerprint)?;
        let earlier = execution_of(&found).cloned();
        if earlier.is_some() {
            FirstTry::LookBack.count();
        }
        Ok(earlier)
    }

    /// The execution as the event at `sequence` left it: the answer to a retried request whose
    /// publish JetStream refused as a duplicate of the first try's (if it is the same change).
    async fn stored_execution(&self, sequence: u64, request: Option<(&EntityId, &str)>) -> Result<Execution, ApiError> {
        let stored = self.store.earlier_try(StreamKind::Executions, sequence).await?;
        if let Some((request_id, fingerprint)) = request {
            answered_by(&stored.event, stored.fingerprint.as_deref(), request_id.as_str(), fingerprint)?;
        }
        execution_of(&stored)
            .cloned()
            .ok_or_else(|| ApiError::internal(format!("event {sequence} of the executions stream has no state")))
    }
}

/// Clocks of api replicas and NATS servers may disagree by this much.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(10);

/// Whether an execution last changed at `updated_at` can have an event stored within the last
/// `window` (and so the first try of a retried request): not if it has not changed since before
/// the window, give or take clock skew. An unknown time may have.
fn changed_within(updated_at: Option<&Timestamp>, now: chrono::DateTime<chrono::Utc>, window: Duration) -> bool {
    let Some(updated_at) = updated_at.and_then(|at| runcast_contract::json::to_datetime(at).ok()) else {
        return true;
    };
    let horizon = chrono::Duration::from_std(window.saturating_add(CLOCK_SKEW_ALLOWANCE))
        .ok()
        .and_then(|span| now.checked_sub_signed(span));
    horizon.is_none_or(|horizon| updated_at >= horizon)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_execution_changed_within_the_window_can_hold_a_retried_requests_first_try() {
        let now = chrono::Utc::now();
        let at = |ago: i64| Some(runcast_contract::json::from_datetime(now - chrono::Duration::seconds(ago)));
        let window = Duration::from_secs(120);
        assert!(changed_within(at(1).as_ref(), now, window));
        assert!(changed_within(at(125).as_ref(), now, window), "within the clock skew allowance");
        assert!(!changed_within(at(131).as_ref(), now, window));
        assert!(!changed_within(at(86_400).as_ref(), now, window), "finished long ago: no look-back");
        assert!(changed_within(None, now, window), "unknown: look");
        assert!(changed_within(at(86_400).as_ref(), now, Duration::MAX), "a window too long to subtract: look");
    }

    #[test]
    fn a_retry_is_answered_by_its_first_try_only_if_it_is_the_same_change() {
        let first = Event {
            r#type: runcast_contract::v1::EventType::ExecutionProgress.into(),
            offset: 7,
            ..Default::default()
        };
        assert!(answered_by(&first, Some("f1"), "r-1", "f1").is_ok());
        assert!(answered_by(&first, None, "r-1", "f1").is_ok(), "stored by an earlier release: taken as the same");
        let err = answered_by(&first, Some("f1"), "r-1", "f2").expect_err("another change");
        assert_eq!(err.kind(), ApiErrorKind::InvalidArgument);
        let message = err.to_string();
        assert!(message.starts_with("request_id \"r-1\" was first sent with another change"), "{message}");
        assert!(message.contains("execution.progress") && message.contains("offset 7"), "{message}");
    }

    #[test]
    fn idempotency_keys_map_to_stable_valid_ids_per_tenant() {
        let acme = EntityId::parse("tenant_id", "acme").expect("id");
        let other = EntityId::parse("tenant_id", "other").expect("id");
        let id = execution_id_for_key(&acme, "order-42");
        assert_eq!(id, execution_id_for_key(&acme, "order-42"));
        assert_ne!(id, execution_id_for_key(&acme, "order-43"));
        assert_ne!(id, execution_id_for_key(&other, "order-42"));
        assert_eq!(id.as_str().len(), 45);
        assert_ne!(new_execution_id(), new_execution_id());
    }
}
