//! Agent presence: a heartbeat publishes `agent.online` when the agent was unknown or offline and
//! `agent.heartbeat` otherwise, each carrying the agent's whole state; the sweeper publishes exactly
//! one `agent.offline` for an agent silent past its timeout (see [`crate::sweeper`]).

use crate::commands::now;
use crate::error::{ApiError, ApiErrorKind};
use crate::store::{EventStore, Read, StoreErrorKind, Stored};
use crate::validate;
use prost_types::Timestamp;
use runcast_contract::v1::{Agent, AgentReported, AgentStatus, Event, EventType, HeartbeatRequest, event};
use runcast_contract::{EntityId, StreamKind, WireEnum};

pub(crate) const DEFAULT_TIMEOUT_SECONDS: u32 = 30;
pub(crate) const MAX_TIMEOUT_SECONDS: u32 = 3600;

pub(crate) fn agent_of(stored: &Stored) -> Option<&Agent> {
    match stored.event.state.as_ref() {
        Some(event::State::Agent(agent)) => Some(agent),
        _ => None,
    }
}

/// The event a heartbeat produces, given the agent's last state (pure).
pub(crate) fn heartbeat_change(
    previous: Option<&Agent>,
    tenant: &EntityId,
    request: &HeartbeatRequest,
    now: Timestamp,
) -> Result<(EventType, Agent), ApiError> {
    let status = match AgentStatus::try_from(request.status) {
        Ok(AgentStatus::Unspecified) => AgentStatus::Online,
        Ok(AgentStatus::Offline) => {
            return Err(ApiError::invalid(
                "status",
                "cannot be offline in a heartbeat: stop sending heartbeats and the agent goes offline after its timeout",
            ));
        }
        Ok(status) => status,
        Err(_) => return Err(ApiError::invalid("status", format!("must be one of {}", AgentStatus::expected()))),
    };
    for (field, value) in [
        ("cpu_percent", request.cpu_percent),
        ("memory_percent", request.memory_percent),
        ("gpu_percent", request.gpu_percent),
    ] {
        if !(0.0..=100.0).contains(&value) {
            return Err(ApiError::invalid(field, format!("is {value}; it must be between 0 and 100")));
        }
    }
    let timeout_seconds = match request.timeout_seconds {
        0 => DEFAULT_TIMEOUT_SECONDS,
        n if n > MAX_TIMEOUT_SECONDS => {
            return Err(ApiError::invalid("timeout_seconds", format!("is {n}; at most {MAX_TIMEOUT_SECONDS}")));
        }
        n => n,
    };
    validate::labels(&request.labels)?;
    if request.running_execution_ids.len() > 1000 {
        return Err(ApiError::invalid("running_execution_ids", "has more than 1000 entries"));
    }
    for id in &request.running_execution_ids {
        validate::id("running_execution_ids", id)?;
    }
    let was_online = previous.is_some_and(|agent| agent.status != i32::from(AgentStatus::Offline));
    let event_type = if was_online { EventType::AgentHeartbeat } else { EventType::AgentOnline };
    let agent = Agent {
        agent_id: request.agent_id.clone(),
        tenant_id: tenant.to_string(),
        status: status.into(),
        cpu_percent: request.cpu_percent,
        memory_percent: request.memory_percent,
        gpu_percent: request.gpu_percent,
        running_execution_ids: request.running_execution_ids.clone(),
        labels: request.labels.clone(),
        timeout_seconds,
        version: previous.map_or(0, |agent| agent.version) + 1,
        offset: 0,
        last_heartbeat_at: Some(now),
        online_since: if was_online { previous.and_then(|agent| agent.online_since) } else { Some(now) },
    };
    Ok((event_type, agent))
}

/// Publishes an agent event with compare-and-set on the agent's subject.
pub(crate) async fn publish(
    store: &EventStore,
    tenant: &EntityId,
    agent_id: &EntityId,
    event_type: EventType,
    agent: Agent,
    expected: u64,
) -> Result<u64, crate::store::StoreError> {
    let event = Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.to_string(),
        agent_id: agent_id.to_string(),
        version: agent.version,
        occurred_at: agent.last_heartbeat_at.filter(|_| event_type != EventType::AgentOffline).or_else(|| Some(now())),
        r#type: event_type.into(),
        payload: Some(event::Payload::AgentReported(AgentReported {
            status: agent.status,
            cpu_percent: agent.cpu_percent,
            memory_percent: agent.memory_percent,
            gpu_percent: agent.gpu_percent,
            running_execution_ids: agent.running_execution_ids.clone(),
        })),
        state: Some(event::State::Agent(agent)),
        ..Default::default()
    };
    store.append(StreamKind::Agents, tenant, agent_id, event, expected, None).await.map(|appended| appended.sequence)
}

pub(crate) async fn heartbeat(
    store: &EventStore,
    tenant: &EntityId,
    request: HeartbeatRequest,
) -> Result<Agent, ApiError> {
    let agent_id = validate::id("agent_id", &request.agent_id)?;
    for attempt in 0..crate::commands::MAX_ATTEMPTS {
        // A stale first read fails the guarded append; retries read the leader.
        let read = if attempt == 0 { Read::Remembered } else { Read::Leader };
        let last = store.last(StreamKind::Agents, tenant, &agent_id, read).await?;
        let previous = last.as_ref().and_then(agent_of);
        let (event_type, mut agent) = heartbeat_change(previous, tenant, &request, now())?;
        let expected = last.as_ref().map_or(0, |stored| stored.sequence);
        match publish(store, tenant, &agent_id, event_type, agent.clone(), expected).await {
            Ok(sequence) => {
                agent.offset = sequence;
                return Ok(agent);
            }
            Err(err) if err.kind() == StoreErrorKind::Conflict => continue,
            Err(err) => return Err(err.into()),
        }
    }
    Err(ApiError::new(ApiErrorKind::Aborted, format!("agent {agent_id} is being updated concurrently: retry")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp { seconds: 1_790_000_000, nanos: 0 };

    fn tenant() -> EntityId {
        EntityId::parse("tenant_id", "acme").expect("id")
    }

    fn request() -> HeartbeatRequest {
        HeartbeatRequest { agent_id: "a1".into(), cpu_percent: 12.0, ..Default::default() }
    }

    #[test]
    fn first_heartbeat_is_online_then_heartbeats_then_online_again_after_offline() {
        let (first, agent) = heartbeat_change(None, &tenant(), &request(), NOW).expect("valid");
        assert_eq!((first, agent.version, agent.online_since), (EventType::AgentOnline, 1, Some(NOW)));
        assert_eq!(agent.timeout_seconds, DEFAULT_TIMEOUT_SECONDS);
        let later = Timestamp { seconds: NOW.seconds + 5, nanos: 0 };
        let (second, agent) = heartbeat_change(Some(&agent), &tenant(), &request(), later).expect("valid");
        assert_eq!((second, agent.version, agent.online_since), (EventType::AgentHeartbeat, 2, Some(NOW)));
        let offline = Agent { status: AgentStatus::Offline.into(), ..agent };
        let (third, agent) = heartbeat_change(Some(&offline), &tenant(), &request(), later).expect("valid");
        assert_eq!((third, agent.online_since), (EventType::AgentOnline, Some(later)));
    }

    #[test]
    fn telemetry_and_timeouts_are_checked() {
        let bad = HeartbeatRequest { cpu_percent: 120.0, ..request() };
        assert!(
            heartbeat_change(None, &tenant(), &bad, NOW)
                .expect_err("cpu")
                .to_string()
                .starts_with("cpu_percent is 120")
        );
        let bad = HeartbeatRequest { timeout_seconds: 99_999, ..request() };
        assert!(
            heartbeat_change(None, &tenant(), &bad, NOW)
                .expect_err("timeout")
                .to_string()
                .starts_with("timeout_seconds")
        );
        let bad = HeartbeatRequest { status: AgentStatus::Offline.into(), ..request() };
        assert!(heartbeat_change(None, &tenant(), &bad, NOW).is_err());
        let bad = HeartbeatRequest { running_execution_ids: vec!["a.b".into()], ..request() };
        assert!(heartbeat_change(None, &tenant(), &bad, NOW).is_err());
    }
}
