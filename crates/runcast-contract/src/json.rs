//! The JSON form of the contract (DESIGN §3): snake_case proto field names, enums as their
//! [`WireEnum`] strings, timestamps as RFC 3339 strings, `google.protobuf.Struct` as a plain
//! JSON object, `Event.state` as the entity itself.
//!
//! build.rs attaches these functions to the generated types by field type; this module is the
//! only hand-written part of the mapping.

use crate::v1::{Agent, Execution, event};
use crate::wire::WireEnum;
use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize_enum<E: WireEnum, S: Serializer>(raw: &i32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(wire_name_of::<E>(*raw))
}

pub fn deserialize_enum<'de, E: WireEnum, D: Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let name = String::deserialize(deserializer)?;
    parse_wire_name::<E>(&name).map_err(D::Error::custom)
}

pub fn serialize_enums<E: WireEnum, S: Serializer>(raw: &[i32], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(raw.iter().map(|value| wire_name_of::<E>(*value)))
}

pub fn deserialize_enums<'de, E: WireEnum, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<i32>, D::Error> {
    Vec::<String>::deserialize(deserializer)?
        .iter()
        .map(|name| parse_wire_name::<E>(name).map_err(D::Error::custom))
        .collect()
}

/// A value this build does not know (sent by a newer peer) reads as `unspecified`.
fn wire_name_of<E: WireEnum>(raw: i32) -> &'static str {
    E::try_from(raw).map_or("unspecified", |value| value.wire_name())
}

/// Parses a wire name into the protobuf value, with an error a person can act on.
pub fn parse_wire_name<E: WireEnum>(name: &str) -> Result<i32, String> {
    E::from_wire_name(name)
        .map(Into::into)
        .ok_or_else(|| format!("unknown {} '{}': expected one of {}", E::WHAT, name.escape_debug(), E::expected()))
}

/// `Option<google.protobuf.Timestamp>` as an RFC 3339 string.
pub mod timestamp {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Timestamp>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(ts) => serializer.serialize_str(&to_rfc3339(ts).map_err(serde::ser::Error::custom)?),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Timestamp>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| from_rfc3339(&text).map_err(D::Error::custom))
            .transpose()
    }
}

pub fn to_rfc3339(ts: &Timestamp) -> Result<String, String> {
    Ok(to_datetime(ts)?.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

pub fn to_datetime(ts: &Timestamp) -> Result<DateTime<Utc>, String> {
    u32::try_from(ts.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(ts.seconds, nanos))
        .ok_or_else(|| format!("timestamp {}s {}ns is out of range", ts.seconds, ts.nanos))
}

pub fn from_datetime(time: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: time.timestamp(), nanos: time.timestamp_subsec_nanos() as i32 }
}

pub fn from_rfc3339(text: &str) -> Result<Timestamp, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| from_datetime(time.with_timezone(&Utc)))
        .map_err(|err| format!("'{}' is not an RFC 3339 timestamp ({err})", text.escape_debug()))
}

/// `Option<google.protobuf.Struct>` as a plain JSON object.
pub mod structure {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Struct>, serializer: S) -> Result<S::Ok, S::Error> {
        value.as_ref().map(struct_to_json).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Struct>, D::Error> {
        match Option::<serde_json::Value>::deserialize(deserializer)? {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Object(map)) => Ok(Some(object_to_struct(map))),
            Some(other) => Err(D::Error::custom(format!("expected a JSON object, got {other}"))),
        }
    }
}

pub fn struct_to_json(value: &Struct) -> serde_json::Value {
    serde_json::Value::Object(value.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

pub fn object_to_struct(map: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct { fields: map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() }
}

fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, Into::into),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => list.values.iter().map(value_to_json).collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(ListValue { values: items.into_iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(map) => Kind::StructValue(object_to_struct(map)),
    };
    Value { kind: Some(kind) }
}

/// `Event.state` is the entity itself in JSON (`"state": {"execution_id": …, "status": …}`),
/// not a wrapper naming the oneof case; the case is recovered from the entity's id field.
impl Serialize for event::State {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Execution(execution) => execution.serialize(serializer),
            Self::Agent(agent) => agent.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for event::State {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        if value.get("execution_id").is_some() {
            Execution::deserialize(value).map(Self::Execution).map_err(D::Error::custom)
        } else if value.get("agent_id").is_some() {
            Agent::deserialize(value).map(Self::Agent).map_err(D::Error::custom)
        } else {
            Err(D::Error::custom("state must carry an execution_id or an agent_id"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::*;
    use prost::Message as _;

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn execution_state(status: ExecutionStatus) -> event::State {
        event::State::Execution(Execution {
            execution_id: "exec-1".into(),
            tenant_id: "acme".into(),
            workflow_id: "nightly".into(),
            status: status.into(),
            version: 3,
            offset: 42,
            progress: 40,
            current_step: "build".into(),
            steps: vec![Step {
                step_id: "build".into(),
                name: "Build".into(),
                status: StepStatus::Running.into(),
                started_at: ts(1_790_000_000, 5_000),
                ..Default::default()
            }],
            approvals: vec![Approval {
                approval_id: "deploy".into(),
                status: ApprovalStatus::Pending.into(),
                deadline: ts(1_790_000_600, 0),
                ..Default::default()
            }],
            labels: [("team".to_owned(), "infra".to_owned())].into(),
            input: Some(object_to_struct(
                serde_json::json!({"branch": "main", "retries": 2.0, "dry": false, "tags": ["a", null]})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )),
            created_at: ts(1_790_000_000, 0),
            updated_at: ts(1_790_000_010, 123_000_000),
            ..Default::default()
        })
    }

    fn agent_state() -> event::State {
        event::State::Agent(Agent {
            agent_id: "agent-7".into(),
            tenant_id: "acme".into(),
            status: AgentStatus::Busy.into(),
            cpu_percent: 12.5,
            running_execution_ids: vec!["exec-1".into()],
            timeout_seconds: 30,
            last_heartbeat_at: ts(1_790_000_000, 0),
            ..Default::default()
        })
    }

    /// One realistic event per type, with the payload and state that type carries.
    fn sample(event_type: EventType) -> Event {
        use event::Payload;
        let status_change = |to: ExecutionStatus| {
            Payload::StatusChanged(StatusChanged {
                from: ExecutionStatus::Running.into(),
                to: to.into(),
                message: "why".into(),
                ..Default::default()
            })
        };
        let step = |status: StepStatus| {
            Payload::StepChanged(StepChanged {
                step_id: "s1".into(),
                name: "S1".into(),
                status: status.into(),
                ..Default::default()
            })
        };
        let approval = |status: ApprovalStatus| {
            Payload::ApprovalChanged(ApprovalChanged {
                approval_id: "deploy".into(),
                status: status.into(),
                deadline: ts(1_790_000_600, 0),
                ..Default::default()
            })
        };
        let agent = |status: AgentStatus| {
            Payload::AgentReported(AgentReported { status: status.into(), cpu_percent: 99.5, ..Default::default() })
        };
        use EventType as T;
        let (payload, state) = match event_type {
            T::Unspecified => unreachable!("not an event type"),
            T::ExecutionCreated => (
                Payload::ExecutionCreated(ExecutionCreated { idempotency_key: "k1".into() }),
                Some(execution_state(ExecutionStatus::Pending)),
            ),
            T::ExecutionStarted => {
                (status_change(ExecutionStatus::Running), Some(execution_state(ExecutionStatus::Running)))
            }
            T::ExecutionProgress => (
                Payload::ProgressReported(ProgressReported {
                    percent: 40,
                    current_step: "build".into(),
                    message: "m".into(),
                }),
                Some(execution_state(ExecutionStatus::Running)),
            ),
            T::ExecutionPaused => {
                (status_change(ExecutionStatus::Paused), Some(execution_state(ExecutionStatus::Paused)))
            }
            T::ExecutionResumed => {
                (status_change(ExecutionStatus::Running), Some(execution_state(ExecutionStatus::Running)))
            }
            T::ExecutionBlocked => {
                (status_change(ExecutionStatus::Blocked), Some(execution_state(ExecutionStatus::Blocked)))
            }
            T::ExecutionCompleted => {
                (status_change(ExecutionStatus::Completed), Some(execution_state(ExecutionStatus::Completed)))
            }
            T::ExecutionFailed => {
                (status_change(ExecutionStatus::Failed), Some(execution_state(ExecutionStatus::Failed)))
            }
            T::ExecutionCancelled => {
                (status_change(ExecutionStatus::Cancelled), Some(execution_state(ExecutionStatus::Cancelled)))
            }
            T::StepStarted => (step(StepStatus::Running), Some(execution_state(ExecutionStatus::Running))),
            T::StepCompleted => (step(StepStatus::Completed), Some(execution_state(ExecutionStatus::Running))),
            T::StepFailed => (step(StepStatus::Failed), Some(execution_state(ExecutionStatus::Running))),
            T::StepSkipped => (step(StepStatus::Skipped), Some(execution_state(ExecutionStatus::Running))),
            T::ApprovalRequired => (approval(ApprovalStatus::Pending), Some(execution_state(ExecutionStatus::Blocked))),
            T::ApprovalGranted => (approval(ApprovalStatus::Granted), Some(execution_state(ExecutionStatus::Running))),
            T::ApprovalDenied => (approval(ApprovalStatus::Denied), Some(execution_state(ExecutionStatus::Failed))),
            T::ApprovalExpired => (approval(ApprovalStatus::Expired), Some(execution_state(ExecutionStatus::Failed))),
            T::LogAppended => (
                Payload::LogsAppended(LogsAppended {
                    lines: vec![
                        LogLine { line_number: 1, text: "hello".into(), stream: LogStream::Stdout.into() },
                        LogLine { line_number: 2, text: "oops ✗".into(), stream: LogStream::Stderr.into() },
                    ],
                }),
                None,
            ),
            T::AgentOnline => (agent(AgentStatus::Online), Some(agent_state())),
            T::AgentHeartbeat => (agent(AgentStatus::Busy), Some(agent_state())),
            T::AgentOffline => (agent(AgentStatus::Offline), Some(agent_state())),
        };
        let is_agent = matches!(state, Some(event::State::Agent(_)));
        Event {
            event_id: "01935f6e-8c1a-7c3e-9f00-000000000001".into(),
            tenant_id: "acme".into(),
            execution_id: if is_agent { String::new() } else { "exec-1".into() },
            agent_id: if is_agent { "agent-7".into() } else { String::new() },
            workflow_id: if is_agent { String::new() } else { "nightly".into() },
            version: 3,
            occurred_at: ts(1_790_000_010, 123_456_789),
            r#type: event_type.into(),
            offset: 1234,
            payload: Some(payload),
            state,
            request_id: if is_agent { String::new() } else { "retry-safe-1".into() },
        }
    }

    #[test]
    fn every_event_type_round_trips_through_json_and_protobuf() {
        for &event_type in EventType::ALL.iter().skip(1) {
            let event = sample(event_type);
            let json = serde_json::to_value(&event).expect("serializes");
            assert_eq!(json["type"], event_type.wire_name());
            let back: Event = serde_json::from_value(json.clone()).expect("deserializes");
            assert_eq!(back, event, "JSON round trip of {}", event_type.wire_name());
            let decoded = Event::decode(event.encode_to_vec().as_slice()).expect("decodes");
            assert_eq!(decoded, event, "protobuf round trip of {}", event_type.wire_name());
        }
    }

    #[test]
    fn json_uses_the_contract_names() {
        let json = serde_json::to_value(sample(EventType::ExecutionStarted)).expect("serializes");
        assert_eq!(json["occurred_at"], "2026-09-21T14:13:30.123456789Z");
        assert_eq!(json["offset"], 1234);
        assert_eq!(json["state"]["status"], "running");
        assert_eq!(json["state"]["steps"][0]["status"], "running");
        assert_eq!(json["state"]["approvals"][0]["status"], "pending");
        assert_eq!(json["state"]["input"]["branch"], "main");
        assert_eq!(json["state"]["input"]["tags"][1], serde_json::Value::Null);
        assert_eq!(json["payload"]["status_changed"]["to"], "running");
        assert_eq!(json["payload"]["status_changed"]["from"], "running");
        assert!(json["state"].get("finished_at").is_none(), "unset timestamps are omitted");
        assert_eq!(json["request_id"], "retry-safe-1");

        let agent = serde_json::to_value(sample(EventType::AgentHeartbeat)).expect("serializes");
        assert!(agent.get("request_id").is_none(), "an event without a request id has no request_id in JSON");
        assert_eq!(agent["state"]["agent_id"], "agent-7");
        assert_eq!(agent["state"]["status"], "busy");
    }

    #[test]
    fn bad_json_names_the_problem() {
        let err = serde_json::from_value::<Event>(serde_json::json!({"type": "execution.exploded"}))
            .expect_err("unknown type");
        assert!(err.to_string().contains("unknown event type 'execution.exploded'"), "{err}");

        let err = serde_json::from_value::<UpdateExecutionStatusRequest>(serde_json::json!({"status": "RUNNING"}))
            .expect_err("enum names are lowercase");
        assert!(err.to_string().contains("expected one of pending, running"), "{err}");

        let err = serde_json::from_value::<Event>(serde_json::json!({"occurred_at": "yesterday"}))
            .expect_err("bad timestamp");
        assert!(err.to_string().contains("RFC 3339"), "{err}");

        let err = serde_json::from_value::<CreateExecutionRequest>(serde_json::json!({"input": [1, 2]}))
            .expect_err("input must be an object");
        assert!(err.to_string().contains("expected a JSON object"), "{err}");

        let err = serde_json::from_value::<Event>(serde_json::json!({"state": {"status": "running"}}))
            .expect_err("state without an id");
        assert!(err.to_string().contains("execution_id or an agent_id"), "{err}");
    }

    #[test]
    fn missing_fields_take_their_defaults_and_lists_of_enums_parse() {
        let request: ListExecutionsRequest =
            serde_json::from_value(serde_json::json!({"statuses": ["running", "blocked"]})).expect("parses");
        assert_eq!(request.statuses, [i32::from(ExecutionStatus::Running), i32::from(ExecutionStatus::Blocked)]);
        assert_eq!(request.page_size, 0);
        assert_eq!(
            serde_json::to_value(&request).expect("serializes")["statuses"],
            serde_json::json!(["running", "blocked"])
        );
    }

    #[test]
    fn timestamps_outside_the_representable_range_are_errors_not_panics() {
        assert!(to_rfc3339(&Timestamp { seconds: i64::MAX, nanos: 0 }).is_err());
        assert!(to_rfc3339(&Timestamp { seconds: 0, nanos: -1 }).is_err());
    }
}
