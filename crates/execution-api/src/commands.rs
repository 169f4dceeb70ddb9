//! Writes: read the execution's last event, let the state machine decide, append the next event
//! with compare-and-set on the subject's sequence, and on a lost race read again — a bounded number
//! of times, then `ABORTED`. No state is kept between requests, so any number of replicas may run.

use crate::domain::state_machine::{Command, Refusal, decide};
use crate::error::{ApiError, ApiErrorKind};
use crate::store::{EventStore, StoreErrorKind, Stored};
use prost_types::Timestamp;
use runcast_contract::v1::{Event, Execution, event};
use runcast_contract::{EntityId, StreamKind};
use sha2::{Digest, Sha256};
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// Attempts of read-decide-append before a contended write gives up with `ABORTED`.
pub const MAX_ATTEMPTS: u32 = 10;

pub fn now() -> Timestamp {
    runcast_contract::json::from_datetime(chrono::Utc::now())
}

/// The id of an execution created with an idempotency key: derived from tenant and key, so every
/// replica, before or after a restart, and long after the broker's duplicate window, maps the same
/// key to the same execution — and the create's compare-and-set lets only one of them create it.
pub fn execution_id_for_key(tenant: &EntityId, key: &str) -> EntityId {
    let digest = Sha256::digest(format!("{tenant}\0{key}").as_bytes());
    let id = format!("idem-{}", &hex::encode(digest)[..40]);
    EntityId::parse("execution_id", &id).unwrap_or_else(|_| unreachable!("hex digits are valid id characters"))
}

pub fn new_execution_id() -> EntityId {
    let id = uuid::Uuid::now_v7().to_string();
    EntityId::parse("execution_id", &id).unwrap_or_else(|_| unreachable!("a UUID is a valid id"))
}

fn execution_of(stored: &Stored) -> Option<&Execution> {
    match stored.event.state.as_ref() {
        Some(event::State::Execution(execution)) => Some(execution),
        _ => None,
    }
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
    read_model: Option<sqlx::PgPool>,
}

impl Executions {
    pub fn new(store: EventStore) -> Self {
        Self { store, read_model: None }
    }

    pub fn with_read_model(store: EventStore, pool: sqlx::PgPool) -> Self {
        Self { store, read_model: Some(pool) }
    }

    /// The execution as the read model last saw it. `None` when unknown there or when PostgreSQL
    /// cannot answer (then the create goes ahead: writes do not wait for PostgreSQL).
    async fn archived_in_read_model(&self, tenant: &EntityId, execution_id: &EntityId) -> Option<Execution> {
        let pool = self.read_model.as_ref()?;
        let query = sqlx::query_as::<_, (Vec<u8>, i64)>(
            "SELECT state, last_offset FROM executions WHERE tenant_id = $1 AND execution_id = $2",
        )
        .bind(tenant.as_str())
        .bind(execution_id.as_str())
        .fetch_optional(pool);
        match tokio::time::timeout(std::time::Duration::from_secs(2), query).await {
            Ok(Ok(Some((state, offset)))) => {
                let mut execution = <Execution as prost::Message>::decode(state.as_slice()).ok()?;
                execution.offset = u64::try_from(offset).unwrap_or(0);
                Some(execution)
            }
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                tracing::warn!(cause = %err, %execution_id, "cannot check the read model for an earlier create; creating");
                None
            }
            Err(_) => {
                tracing::warn!(%execution_id, "the read model did not answer in time; creating");
                None
            }
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The current state, straight from the stream: read-your-writes on any replica.
    pub async fn get(&self, tenant: &EntityId, execution_id: &EntityId) -> Result<Execution, ApiError> {
        let stored = self.store.last(StreamKind::Executions, tenant, execution_id).await?;
        stored
            .as_ref()
            .and_then(execution_of)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("execution {execution_id}")))
    }

    /// Applies `command` to the execution. `expected_version`, when given, must be the version the
    /// execution is at. A `Create` of an execution that exists returns it unchanged (idempotency).
    pub async fn execute(
        &self,
        tenant: &EntityId,
        execution_id: &EntityId,
        command: Command,
        expected_version: Option<u64>,
    ) -> Result<Execution, ApiError> {
        let name = command.name();
        let started = std::time::Instant::now();
        let outcome = self.decide_and_append(tenant, execution_id, command, expected_version).await;
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
        expected_version: Option<u64>,
    ) -> Result<Execution, ApiError> {
        for attempt in 0..MAX_ATTEMPTS {
            let last = self.store.last(StreamKind::Executions, tenant, execution_id).await?;
            // An idempotency key maps to its execution "for as long as it exists": also after the
            // stream dropped its events, when only the read model still has it.
            if last.is_none()
                && let Command::Create { idempotency_key, .. } = &command
                && !idempotency_key.is_empty()
                && let Some(existing) = self.archived_in_read_model(tenant, execution_id).await
            {
                return Ok(existing);
            }
            let current = last.as_ref().and_then(execution_of);
            if let (Some(expected), Some(current)) = (expected_version, current)
                && current.version != expected
            {
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
                version: state.version,
                occurred_at: Some(now),
                r#type: change.event_type.into(),
                payload: Some(change.payload),
                state: Some(event::State::Execution(state.clone())),
                ..Default::default()
            };
            let expected_sequence = last.as_ref().map_or(0, |stored| stored.sequence);
            match self.store.append(StreamKind::Executions, tenant, execution_id, &event, expected_sequence).await {
                Ok(sequence) => {
                    state.offset = sequence;
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

#[cfg(test)]
mod tests {
    use super::*;

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
