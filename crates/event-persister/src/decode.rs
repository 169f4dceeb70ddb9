//! From the raw bytes of a stream message to an event the store may trust (DESIGN §2). Pure: no
//! I/O, so every rule is unit-tested. A message that fails here is a *poison* message: it goes to
//! the dead letters with the reason, never retried, never blocking the stream.

use chrono::{DateTime, Utc};
use prost::Message as _;
use runcast_contract::v1::{AgentStatus, Event, EventType, ExecutionStatus, event::Payload, event::State};
use runcast_contract::{EntityId, StreamKind};
use uuid::Uuid;

/// Why a message breaks the contract; stored in `dead_letters.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ContractViolation(pub String);

fn violation(message: impl Into<String>) -> ContractViolation {
    ContractViolation(message.into())
}

/// A validated event at its offset.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub stream: StreamKind,
    pub offset: u64,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub event_type: EventType,
    /// The event with `offset` (and the state's `offset`) filled in: what the history stores.
    pub event: Event,
}

impl Decoded {
    /// The protobuf bytes stored in `events.body`.
    pub fn body(&self) -> Vec<u8> {
        self.event.encode_to_vec()
    }
}

/// Converts a protobuf timestamp, refusing values PostgreSQL or chrono cannot hold.
pub fn timestamp(
    field: &str,
    value: Option<&prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, ContractViolation> {
    let Some(value) = value else { return Ok(None) };
    let nanos = u32::try_from(value.nanos).ok().filter(|nanos| *nanos < 1_000_000_000);
    nanos
        .and_then(|nanos| DateTime::from_timestamp(value.seconds, nanos))
        // PostgreSQL timestamptz ends in 294276 AD; keep well inside.
        .filter(|time| time.timestamp() < 100_000_000_000)
        .map(Some)
        .ok_or_else(|| violation(format!("{field} is not a valid timestamp")))
}

fn id(field: &'static str, value: &str) -> Result<(), ContractViolation> {
    EntityId::parse(field, value).map(|_| ()).map_err(|err| violation(err.to_string()))
}

/// Decodes and validates one message of `stream` at `offset`.
pub fn decode(stream: StreamKind, offset: u64, payload: &[u8]) -> Result<Decoded, ContractViolation> {
    let mut event = Event::decode(payload).map_err(|err| violation(format!("not a runcast.v1.Event: {err}")))?;
    let event_id = Uuid::parse_str(&event.event_id)
        .map_err(|_| violation(format!("event_id {:?} is not a UUID", event.event_id)))?;
    id("tenant_id", &event.tenant_id)?;
    let event_type = EventType::try_from(event.r#type)
        .ok()
        .filter(|kind| *kind != EventType::Unspecified)
        .ok_or_else(|| violation(format!("unknown event type {}", event.r#type)))?;
    if event_type.stream() != stream {
        return Err(violation(format!(
            "event type {} does not belong on stream {}",
            runcast_contract::WireEnum::wire_name(event_type),
            stream.base_name()
        )));
    }
    let occurred_at =
        timestamp("occurred_at", event.occurred_at.as_ref())?.ok_or_else(|| violation("occurred_at is missing"))?;
    i64::try_from(offset).map_err(|_| violation("offset out of range"))?;

    match stream {
        StreamKind::Executions => validate_execution(&event)?,
        StreamKind::Logs => validate_logs(&event)?,
        StreamKind::Agents => validate_agent(&event)?,
    }

    event.offset = offset;
    match &mut event.state {
        Some(State::Execution(state)) => state.offset = offset,
        Some(State::Agent(state)) => state.offset = offset,
        None => {}
    }
    Ok(Decoded { stream, offset, event_id, occurred_at, event_type, event })
}

/// The subject must name the event's own tenant and entity (`….{tenant}.{entity}`): the gateway
/// authorizes subscriptions by subject, the api's queries by the stored tenant, and the two must
/// never disagree.
pub fn check_subject(decoded: &Decoded, subject: &str) -> Result<(), ContractViolation> {
    let event = &decoded.event;
    let entity = match decoded.stream {
        StreamKind::Agents => &event.agent_id,
        StreamKind::Executions | StreamKind::Logs => &event.execution_id,
    };
    let mut tokens = subject.rsplit('.');
    let (subject_entity, subject_tenant) = (tokens.next(), tokens.next());
    if subject_entity != Some(entity.as_str()) || subject_tenant != Some(event.tenant_id.as_str()) {
        return Err(violation(format!(
            "subject {subject:?} does not name the event's tenant {:?} and entity {entity:?}",
            event.tenant_id
        )));
    }
    Ok(())
}

fn version(event: &Event) -> Result<(), ContractViolation> {
    if event.version == 0 || i64::try_from(event.version).is_err() {
        return Err(violation(format!("version {} is out of range", event.version)));
    }
    Ok(())
}

fn validate_execution(event: &Event) -> Result<(), ContractViolation> {
    id("execution_id", &event.execution_id)?;
    version(event)?;
    let Some(State::Execution(state)) = &event.state else {
        return Err(violation("an execution event must carry the execution state"));
    };
    if state.execution_id != event.execution_id || state.tenant_id != event.tenant_id {
        return Err(violation("state belongs to another execution"));
    }
    if state.version != event.version {
        return Err(violation(format!("state version {} differs from event version {}", state.version, event.version)));
    }
    if !state.workflow_id.is_empty() {
        id("workflow_id", &state.workflow_id)?;
    }
    if ExecutionStatus::try_from(state.status).map_or(true, |status| status == ExecutionStatus::Unspecified) {
        return Err(violation(format!("unknown execution status {}", state.status)));
    }
    if state.progress > 100 {
        return Err(violation(format!("progress {} is above 100", state.progress)));
    }
    for (field, value) in [
        ("created_at", state.created_at.as_ref()),
        ("updated_at", state.updated_at.as_ref()),
        ("started_at", state.started_at.as_ref()),
        ("finished_at", state.finished_at.as_ref()),
    ] {
        timestamp(field, value)?;
    }
    for approval in &state.approvals {
        if approval.approval_id.is_empty() {
            return Err(violation("an approval has no approval_id"));
        }
        timestamp("deadline", approval.deadline.as_ref())?;
        timestamp("requested_at", approval.requested_at.as_ref())?;
        timestamp("resolved_at", approval.resolved_at.as_ref())?;
    }
    let mut ids: Vec<&str> = state.approvals.iter().map(|a| a.approval_id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(violation("two approvals share an approval_id"));
    }
    Ok(())
}

fn validate_logs(event: &Event) -> Result<(), ContractViolation> {
    id("execution_id", &event.execution_id)?;
    let Some(Payload::LogsAppended(logs)) = &event.payload else {
        return Err(violation("a log.appended event must carry logs_appended"));
    };
    if let Some(line) = logs.lines.iter().find(|line| line.line_number == 0 || i64::try_from(line.line_number).is_err())
    {
        return Err(violation(format!("line_number {} is out of range", line.line_number)));
    }
    Ok(())
}

fn validate_agent(event: &Event) -> Result<(), ContractViolation> {
    id("agent_id", &event.agent_id)?;
    version(event)?;
    let Some(State::Agent(state)) = &event.state else {
        return Err(violation("an agent event must carry the agent state"));
    };
    if state.agent_id != event.agent_id || state.tenant_id != event.tenant_id {
        return Err(violation("state belongs to another agent"));
    }
    if state.version != event.version {
        return Err(violation(format!("state version {} differs from event version {}", state.version, event.version)));
    }
    if AgentStatus::try_from(state.status).map_or(true, |status| status == AgentStatus::Unspecified) {
        return Err(violation(format!("unknown agent status {}", state.status)));
    }
    if i32::try_from(state.timeout_seconds).is_err() {
        return Err(violation("timeout_seconds is out of range"));
    }
    timestamp("last_heartbeat_at", state.last_heartbeat_at.as_ref())?;
    timestamp("online_since", state.online_since.as_ref())?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use runcast_contract::v1::{Agent, Approval, ApprovalStatus, Execution, ExecutionCreated, LogLine, LogsAppended};

    pub(crate) fn ts(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    pub(crate) fn execution_event(execution: &str, version: u64, status: ExecutionStatus) -> Event {
        Event {
            event_id: Uuid::now_v7().to_string(),
            tenant_id: "acme".into(),
            execution_id: execution.into(),
            workflow_id: "wf".into(),
            version,
            occurred_at: Some(ts(1_795_000_000 + i64::try_from(version).unwrap_or(0))),
            r#type: if version == 1 { EventType::ExecutionCreated.into() } else { EventType::ExecutionProgress.into() },
            payload: (version == 1)
                .then(|| Payload::ExecutionCreated(ExecutionCreated { idempotency_key: format!("key-{execution}") })),
            state: Some(State::Execution(Execution {
                execution_id: execution.into(),
                tenant_id: "acme".into(),
                workflow_id: "wf".into(),
                status: status.into(),
                version,
                progress: u32::try_from(version.min(100)).unwrap_or(0),
                approvals: vec![Approval {
                    approval_id: "a1".into(),
                    status: ApprovalStatus::Pending.into(),
                    requested_at: Some(ts(1_795_000_000)),
                    ..Default::default()
                }],
                created_at: Some(ts(1_795_000_000)),
                updated_at: Some(ts(1_795_000_000 + i64::try_from(version).unwrap_or(0))),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_execution_event_decodes_with_its_offset_filled_in() {
        let event = execution_event("e1", 1, ExecutionStatus::Pending);
        let decoded = decode(StreamKind::Executions, 42, &event.encode_to_vec()).expect("valid event");
        assert_eq!(decoded.offset, 42);
        assert_eq!(decoded.event.offset, 42);
        let Some(State::Execution(state)) = &decoded.event.state else { panic!("state kept") };
        assert_eq!(state.offset, 42);
        assert_eq!(decoded.event_type, EventType::ExecutionCreated);
        assert_eq!(Event::decode(decoded.body().as_slice()).ok(), Some(decoded.event));
    }

    #[test]
    fn garbage_and_contract_violations_are_refused_with_a_reason() {
        let cases: Vec<(StreamKind, Vec<u8>, &str)> = vec![
            (StreamKind::Executions, b"\xff\xff\xff".to_vec(), "not a runcast.v1.Event"),
            (
                StreamKind::Logs,
                execution_event("e1", 1, ExecutionStatus::Pending).encode_to_vec(),
                "does not belong on stream LOGS",
            ),
            (
                StreamKind::Executions,
                Event { event_id: "nope".into(), ..execution_event("e1", 1, ExecutionStatus::Pending) }.encode_to_vec(),
                "not a UUID",
            ),
            (
                StreamKind::Executions,
                Event { tenant_id: "a.b".into(), ..execution_event("e1", 1, ExecutionStatus::Pending) }.encode_to_vec(),
                "tenant_id",
            ),
            (
                StreamKind::Executions,
                Event { version: 2, ..execution_event("e1", 1, ExecutionStatus::Pending) }.encode_to_vec(),
                "differs from event version",
            ),
            (
                StreamKind::Executions,
                Event { state: None, ..execution_event("e1", 1, ExecutionStatus::Pending) }.encode_to_vec(),
                "must carry the execution state",
            ),
            (
                StreamKind::Executions,
                execution_event("e1", 1, ExecutionStatus::Unspecified).encode_to_vec(),
                "unknown execution status",
            ),
            (
                StreamKind::Executions,
                Event { occurred_at: None, ..execution_event("e1", 1, ExecutionStatus::Pending) }.encode_to_vec(),
                "occurred_at is missing",
            ),
        ];
        for (stream, bytes, expected) in cases {
            let err = decode(stream, 1, &bytes).expect_err(expected);
            assert!(err.0.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn the_subject_must_name_the_events_tenant_and_entity() {
        let event = execution_event("e1", 1, ExecutionStatus::Pending);
        let decoded = decode(StreamKind::Executions, 1, &event.encode_to_vec()).expect("valid");
        check_subject(&decoded, "exec.acme.e1").expect("its own subject");
        check_subject(&decoded, "t42.exec.acme.e1").expect("with a test prefix");
        for other in ["exec.acme.e2", "exec.other.e1", "e1", ""] {
            assert!(check_subject(&decoded, other).is_err(), "{other}");
        }
    }

    #[test]
    fn log_and_agent_events_are_checked_against_their_own_rules() {
        let logs = Event {
            event_id: Uuid::now_v7().to_string(),
            tenant_id: "acme".into(),
            execution_id: "e1".into(),
            occurred_at: Some(ts(1_795_000_000)),
            r#type: EventType::LogAppended.into(),
            payload: Some(Payload::LogsAppended(LogsAppended {
                lines: vec![LogLine { line_number: 1, text: "hello".into(), stream: 1 }],
            })),
            ..Default::default()
        };
        decode(StreamKind::Logs, 1, &logs.encode_to_vec()).expect("valid logs");
        let mut bad = logs.clone();
        bad.payload = Some(Payload::LogsAppended(LogsAppended { lines: vec![LogLine::default()] }));
        assert!(decode(StreamKind::Logs, 1, &bad.encode_to_vec()).is_err());

        let agent = Event {
            event_id: Uuid::now_v7().to_string(),
            tenant_id: "acme".into(),
            agent_id: "a1".into(),
            version: 1,
            occurred_at: Some(ts(1_795_000_000)),
            r#type: EventType::AgentOnline.into(),
            state: Some(State::Agent(Agent {
                agent_id: "a1".into(),
                tenant_id: "acme".into(),
                status: AgentStatus::Online.into(),
                version: 1,
                ..Default::default()
            })),
            ..Default::default()
        };
        decode(StreamKind::Agents, 1, &agent.encode_to_vec()).expect("valid agent event");
        let mut other = agent.clone();
        other.agent_id = "a2".into();
        assert!(decode(StreamKind::Agents, 1, &other.encode_to_vec()).is_err());
    }
}
