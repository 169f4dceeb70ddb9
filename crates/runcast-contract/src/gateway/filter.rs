//! Subscription filters (DESIGN §4): `workflow_ids`, `execution_ids`, `statuses`, `types`. Each
//! non-empty list must contain the event's value (lists are ANDed, values within a list ORed).
//! Values are validated when the subscription is made, so matching never fails. Matching runs per
//! event per subscriber in the gateway's hub: it allocates nothing.

use crate::v1::{AgentStatus, Event, EventType, ExecutionStatus, event};
use crate::{EntityId, WireEnum};
use serde::Deserialize;

/// Longest list a filter may hold; longer lists are refused, not truncated.
pub const MAX_FILTER_VALUES: usize = 100;

/// The JSON form, as sent by clients (and built from SSE query parameters).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFilters {
    #[serde(default)]
    pub workflow_ids: Vec<String>,
    #[serde(default)]
    pub execution_ids: Vec<String>,
    #[serde(default)]
    pub statuses: Vec<String>,
    #[serde(default)]
    pub types: Vec<String>,
}

/// A status filter value: execution and agent statuses share the `statuses` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Execution(ExecutionStatus),
    Agent(AgentStatus),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    workflow_ids: Vec<EntityId>,
    execution_ids: Vec<EntityId>,
    statuses: Vec<Status>,
    types: Vec<EventType>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidFilter(pub String);

impl Filters {
    pub fn parse(raw: RawFilters) -> Result<Self, InvalidFilter> {
        for (name, list) in [
            ("workflow_ids", &raw.workflow_ids),
            ("execution_ids", &raw.execution_ids),
            ("statuses", &raw.statuses),
            ("types", &raw.types),
        ] {
            if list.len() > MAX_FILTER_VALUES {
                return Err(InvalidFilter(format!(
                    "filters.{name} has {} values; at most {MAX_FILTER_VALUES} are allowed",
                    list.len()
                )));
            }
        }
        let ids = |field: &'static str, list: &[String]| {
            list.iter()
                .map(|value| EntityId::parse(field, value).map_err(|err| InvalidFilter(format!("filters.{err}"))))
                .collect::<Result<Vec<_>, _>>()
        };
        let statuses = raw
            .statuses
            .iter()
            .map(|name| {
                ExecutionStatus::from_wire_name(name)
                    .map(Status::Execution)
                    .or_else(|| AgentStatus::from_wire_name(name).map(Status::Agent))
                    .filter(|_| name != "unspecified")
                    .ok_or_else(|| {
                        InvalidFilter(format!(
                            "filters.statuses: unknown status '{}': expected one of {}, or for agents {}",
                            name.escape_debug(),
                            ExecutionStatus::expected(),
                            AgentStatus::expected()
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types = raw
            .types
            .iter()
            .map(|name| {
                EventType::from_wire_name(name).filter(|t| *t != EventType::Unspecified).ok_or_else(|| {
                    InvalidFilter(format!(
                        "filters.types: unknown event type '{}': expected one of {}",
                        name.escape_debug(),
                        EventType::expected()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            workflow_ids: ids("workflow_ids", &raw.workflow_ids)?,
            execution_ids: ids("execution_ids", &raw.execution_ids)?,
            statuses,
            types,
        })
    }

    /// Parses the comma-separated SSE query form (`?statuses=running,failed`).
    pub fn from_query(
        workflow_ids: Option<&str>,
        execution_ids: Option<&str>,
        statuses: Option<&str>,
        types: Option<&str>,
    ) -> Result<Self, InvalidFilter> {
        let split = |value: Option<&str>| -> Vec<String> {
            value
                .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        Self::parse(RawFilters {
            workflow_ids: split(workflow_ids),
            execution_ids: split(execution_ids),
            statuses: split(statuses),
            types: split(types),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.workflow_ids.is_empty()
            && self.execution_ids.is_empty()
            && self.statuses.is_empty()
            && self.types.is_empty()
    }

    #[inline]
    pub fn matches(&self, event: &Event) -> bool {
        if !self.workflow_ids.is_empty() && !self.workflow_ids.iter().any(|id| id.as_str() == event.workflow_id) {
            return false;
        }
        if !self.execution_ids.is_empty() && !self.execution_ids.iter().any(|id| id.as_str() == event.execution_id) {
            return false;
        }
        if !self.types.is_empty() && !self.types.iter().any(|t| i32::from(*t) == event.r#type) {
            return false;
        }
        if !self.statuses.is_empty() {
            // The status an event is filtered on is the entity's status after it; events without
            // a state (log lines) have none, so a status filter excludes them.
            let status = match &event.state {
                Some(event::State::Execution(execution)) => {
                    ExecutionStatus::try_from(execution.status).ok().map(Status::Execution)
                }
                Some(event::State::Agent(agent)) => AgentStatus::try_from(agent.status).ok().map(Status::Agent),
                None => None,
            };
            if !status.is_some_and(|status| self.statuses.contains(&status)) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Agent, Execution};

    fn execution_event(workflow: &str, execution: &str, kind: EventType, status: ExecutionStatus) -> Event {
        Event {
            workflow_id: workflow.into(),
            execution_id: execution.into(),
            r#type: kind.into(),
            state: Some(event::State::Execution(Execution { status: status.into(), ..Default::default() })),
            ..Default::default()
        }
    }

    fn filters(json: serde_json::Value) -> Result<Filters, InvalidFilter> {
        Filters::parse(serde_json::from_value(json).expect("shape"))
    }

    #[test]
    fn empty_filters_match_everything() {
        let f = Filters::default();
        assert!(f.is_empty());
        assert!(f.matches(&Event::default()));
    }

    #[test]
    fn each_list_selects_and_lists_combine_with_and() {
        let started = execution_event("wf1", "e1", EventType::ExecutionStarted, ExecutionStatus::Running);
        let failed = execution_event("wf2", "e2", EventType::ExecutionFailed, ExecutionStatus::Failed);
        let f = filters(serde_json::json!({"statuses": ["failed"]})).expect("valid");
        assert!(!f.matches(&started) && f.matches(&failed));
        let f = filters(serde_json::json!({"types": ["execution.started"]})).expect("valid");
        assert!(f.matches(&started) && !f.matches(&failed));
        let f = filters(serde_json::json!({"workflow_ids": ["wf2", "wf3"]})).expect("valid");
        assert!(!f.matches(&started) && f.matches(&failed));
        let f = filters(serde_json::json!({"execution_ids": ["e1"]})).expect("valid");
        assert!(f.matches(&started) && !f.matches(&failed));
        let f = filters(serde_json::json!({"execution_ids": ["e1"], "statuses": ["failed"]})).expect("valid");
        assert!(!f.matches(&started) && !f.matches(&failed));
    }

    #[test]
    fn agent_statuses_filter_agent_events_and_logs_never_match_a_status() {
        let agent = Event {
            r#type: EventType::AgentOnline.into(),
            state: Some(event::State::Agent(Agent { status: AgentStatus::Busy.into(), ..Default::default() })),
            ..Default::default()
        };
        let f = filters(serde_json::json!({"statuses": ["busy"]})).expect("valid");
        assert!(f.matches(&agent));
        let log = Event { r#type: EventType::LogAppended.into(), ..Default::default() };
        assert!(!f.matches(&log));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        for (json, needle) in [
            (serde_json::json!({"statuses": ["RUNNING"]}), "filters.statuses"),
            (serde_json::json!({"statuses": ["unspecified"]}), "filters.statuses"),
            (serde_json::json!({"types": ["execution_started"]}), "filters.types"),
            (serde_json::json!({"workflow_ids": ["a.b"]}), "filters.workflow_ids"),
            (serde_json::json!({"execution_ids": vec!["x"; 101]}), "at most 100"),
        ] {
            let err = filters(json).expect_err(needle);
            assert!(err.0.contains(needle), "{err} should mention {needle}");
        }
        assert!(serde_json::from_value::<RawFilters>(serde_json::json!({"status": []})).is_err());
    }

    #[test]
    fn the_query_form_splits_on_commas() {
        let f = Filters::from_query(None, Some("e1, e2"), Some("running"), None).expect("valid");
        assert!(f.matches(&execution_event("w", "e2", EventType::ExecutionStarted, ExecutionStatus::Running)));
    }
}
