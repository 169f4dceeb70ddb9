//! Events as the api publishes them, for tests that publish into NATS or feed a consumer. Each
//! builder sets what every caller needs; a test adds its own fields with `Event { .., ..built }`.

use runcast_contract::v1::{Agent, Event, EventType, Execution, ExecutionStatus, LogLine, LogsAppended, event};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh event id, time-ordered as the api makes them.
pub fn event_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current time as a protobuf timestamp.
pub fn timestamp_now() -> prost_types::Timestamp {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(0),
        nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
    }
}

/// An execution event carrying the whole state after it (ids, status, version), occurred now.
pub fn execution_event(
    tenant: &str,
    execution: &str,
    workflow: &str,
    version: u64,
    kind: EventType,
    status: ExecutionStatus,
) -> Event {
    Event {
        event_id: event_id(),
        tenant_id: tenant.into(),
        execution_id: execution.into(),
        workflow_id: workflow.into(),
        version,
        occurred_at: Some(timestamp_now()),
        r#type: kind.into(),
        state: Some(event::State::Execution(Execution {
            execution_id: execution.into(),
            tenant_id: tenant.into(),
            workflow_id: workflow.into(),
            status: status.into(),
            version,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// An agent event whose state names the agent and its tenant (no time: add `occurred_at`).
pub fn agent_event(tenant: &str, agent: &str, version: u64, kind: EventType) -> Event {
    Event {
        event_id: event_id(),
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        version,
        r#type: kind.into(),
        state: Some(event::State::Agent(Agent {
            agent_id: agent.into(),
            tenant_id: tenant.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A `log.appended` event of `execution` with `lines` (no time: add `occurred_at`).
pub fn log_event(tenant: &str, execution: &str, lines: Vec<LogLine>) -> Event {
    Event {
        event_id: event_id(),
        tenant_id: tenant.into(),
        execution_id: execution.into(),
        r#type: EventType::LogAppended.into(),
        payload: Some(event::Payload::LogsAppended(LogsAppended { lines })),
        ..Default::default()
    }
}
