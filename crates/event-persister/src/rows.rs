//! Row mapping and the fold: a batch of decoded events becomes the rows one transaction writes.
//! Pure, and shared by the live path and `rebuild`, which is why both yield the same rows.
//!
//! Every execution and agent event carries the entity's whole state, so the read model needs only
//! the event with the highest version per entity in a batch; the store's `WHERE version <` guard
//! does the same across batches, replicas and redeliveries. Rows come out sorted by key, so two
//! replicas writing overlapping rows lock them in the same order and cannot deadlock.

use crate::decode::{Decoded, timestamp};
use chrono::{DateTime, Utc};
use prost::Message as _;
use runcast_contract::WireEnum;
use runcast_contract::v1::{
    Agent, AgentStatus, ApprovalStatus, Execution, ExecutionStatus, LogStream, event::Payload, event::State,
};
use std::collections::BTreeMap;

pub use runcast_store::rows::{AgentRow, ApprovalRow, Batch, ExecutionRow, HistoryRow, LogLineRow};

type Key = (String, String);

/// The rows of one batch (or of a whole rebuild).
#[derive(Debug, Default)]
pub struct Fold {
    history: Vec<HistoryRow>,
    executions: BTreeMap<Key, ExecutionRow>,
    agents: BTreeMap<Key, AgentRow>,
    log_lines: Vec<LogLineRow>,
    /// `idempotency_key` of `execution.created`, kept apart: the created event is rarely the
    /// latest one of its batch, and the key must survive its execution's later versions.
    idempotency_keys: BTreeMap<Key, String>,
}

fn to_i64(value: u64) -> i64 {
    // decode() refused offsets and versions above i64::MAX.
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Values that decode() validated: fall back rather than fail.
fn time_or(value: Option<&prost_types::Timestamp>, fallback: DateTime<Utc>) -> DateTime<Utc> {
    timestamp("", value).ok().flatten().unwrap_or(fallback)
}

fn time(value: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    timestamp("", value).ok().flatten()
}

/// The longest a silent execution may outlive its heartbeat timeout before the sweeper finds it.
const HEARTBEAT_DEADLINE_GRANULE_MAX_MS: i64 = 5_000;

/// When a running execution last heard from at `updated_at` is overdue: `updated_at + timeout`,
/// rounded up to a granule of an eighth of the timeout (5 s at most).
///
/// `heartbeat_deadline` is indexed (the sweeper's query), and PostgreSQL can only update a row
/// in place (a HOT update, no new entry in any of the table's indexes) when no indexed column
/// changed. An exact deadline moved with every event, so every progress report of a watched
/// execution rewrote all of its indexes (0 % HOT, +40 % PostgreSQL CPU per event in the drain
/// benchmark). Rounded up, the deadline moves once per granule; the sweeper finds a silent
/// execution at most a granule late, and the api checks the exact timeout before failing it.
fn heartbeat_deadline(updated_at: DateTime<Utc>, timeout_seconds: u32) -> DateTime<Utc> {
    let timeout_ms = i64::from(timeout_seconds) * 1_000;
    let granule = (timeout_ms / 8).clamp(1, HEARTBEAT_DEADLINE_GRANULE_MAX_MS);
    let exact = updated_at.timestamp_millis().saturating_add(timeout_ms);
    let rounded = exact.div_euclid(granule).saturating_add(i64::from(exact.rem_euclid(granule) != 0)) * granule;
    DateTime::from_timestamp_millis(rounded).unwrap_or(updated_at)
}

/// JSON text for a `jsonb` column. Serializing the contract's types cannot fail (no maps with
/// non-string keys); `null` would be stored if it did.
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn wire<E: WireEnum>(raw: i32) -> &'static str {
    E::try_from(raw).map_or("unspecified", |value| value.wire_name())
}

impl Fold {
    /// Adds one event. `with_history`: false for a rebuild, which reads the history it folds.
    pub fn add(&mut self, decoded: &Decoded, with_history: bool) {
        let event = &decoded.event;
        if with_history {
            self.history.push(HistoryRow {
                occurred_at: decoded.occurred_at,
                event_id: decoded.event_id,
                stream: decoded.stream.base_name(),
                stream_offset: to_i64(decoded.offset),
                tenant_id: event.tenant_id.clone(),
                execution_id: event.execution_id.clone(),
                agent_id: event.agent_id.clone(),
                workflow_id: event.workflow_id.clone(),
                event_type: decoded.event_type.wire_name(),
                version: to_i64(event.version),
                body: decoded.body(),
            });
        }
        match (&event.state, &event.payload) {
            (Some(State::Execution(state)), payload) => {
                let key = (state.tenant_id.clone(), state.execution_id.clone());
                if let Some(Payload::ExecutionCreated(created)) = payload
                    && !created.idempotency_key.is_empty()
                {
                    self.idempotency_keys.insert(key.clone(), created.idempotency_key.clone());
                    if let Some(row) = self.executions.get_mut(&key) {
                        row.idempotency_key = Some(created.idempotency_key.clone());
                    }
                }
                let newer = self.executions.get(&key).is_none_or(|row| row.version < to_i64(state.version));
                if newer {
                    let mut row = execution_row(state, decoded.occurred_at);
                    row.idempotency_key = self.idempotency_keys.get(&key).cloned();
                    self.executions.insert(key, row);
                }
            }
            (Some(State::Agent(state)), _) => {
                let key = (state.tenant_id.clone(), state.agent_id.clone());
                let newer = self.agents.get(&key).is_none_or(|row| row.version < to_i64(state.version));
                if newer {
                    self.agents.insert(key, agent_row(state, decoded.occurred_at));
                }
            }
            (None, Some(Payload::LogsAppended(logs))) => {
                self.log_lines.extend(logs.lines.iter().map(|line| LogLineRow {
                    occurred_at: decoded.occurred_at,
                    tenant_id: event.tenant_id.clone(),
                    execution_id: event.execution_id.clone(),
                    line_number: to_i64(line.line_number),
                    stream_offset: to_i64(decoded.offset),
                    log_stream: match LogStream::try_from(line.stream) {
                        Ok(LogStream::Stderr) => "stderr",
                        _ => "stdout",
                    },
                    text: line.text.clone(),
                }));
            }
            (None, _) => {}
        }
    }

    pub fn is_empty(&self) -> bool {
        self.history.is_empty() && self.executions.is_empty() && self.agents.is_empty() && self.log_lines.is_empty()
    }

    pub fn history(&self) -> &[HistoryRow] {
        &self.history
    }

    /// The latest state of each execution, sorted by key, with the idempotency keys seen.
    pub fn executions(&self) -> impl Iterator<Item = &ExecutionRow> {
        self.executions.values()
    }

    /// Idempotency keys of executions whose created event is in the fold (tenant, execution, key).
    pub fn idempotency_keys(&self) -> impl Iterator<Item = (&str, &str, &str)> {
        self.idempotency_keys
            .iter()
            .map(|((tenant, execution), key)| (tenant.as_str(), execution.as_str(), key.as_str()))
    }

    pub fn agents(&self) -> impl Iterator<Item = &AgentRow> {
        self.agents.values()
    }

    pub fn log_lines(&self) -> &[LogLineRow] {
        &self.log_lines
    }

    /// The rows the store writes for this fold.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            history: &self.history,
            executions: self.executions().collect(),
            idempotency_keys: self.idempotency_keys().collect(),
            agents: self.agents().collect(),
            log_lines: &self.log_lines,
        }
    }
}

fn execution_row(state: &Execution, occurred_at: DateTime<Utc>) -> ExecutionRow {
    let approval_rows = state
        .approvals
        .iter()
        .map(|approval| ApprovalRow {
            approval_id: approval.approval_id.clone(),
            status: wire::<ApprovalStatus>(approval.status),
            reason: approval.reason.clone(),
            deadline: time(approval.deadline.as_ref()),
            requested_at: time_or(approval.requested_at.as_ref(), occurred_at),
            resolved_at: time(approval.resolved_at.as_ref()),
            comment: approval.comment.clone(),
        })
        .collect();
    let updated_at = time_or(state.updated_at.as_ref(), occurred_at);
    let heartbeat_deadline = (state.status == i32::from(ExecutionStatus::Running)
        && state.heartbeat_timeout_seconds > 0)
        .then(|| heartbeat_deadline(updated_at, state.heartbeat_timeout_seconds));
    ExecutionRow {
        tenant_id: state.tenant_id.clone(),
        execution_id: state.execution_id.clone(),
        workflow_id: state.workflow_id.clone(),
        status: wire::<ExecutionStatus>(state.status),
        version: to_i64(state.version),
        last_offset: to_i64(state.offset),
        // decode() refused progress above 100.
        progress: i16::try_from(state.progress.min(100)).unwrap_or(100),
        current_step: state.current_step.clone(),
        approvals: json(&state.approvals),
        labels: json(&state.labels),
        error: state.error.clone(),
        idempotency_key: None,
        state: state.encode_to_vec(),
        created_at: time_or(state.created_at.as_ref(), occurred_at),
        updated_at,
        started_at: time(state.started_at.as_ref()),
        finished_at: time(state.finished_at.as_ref()),
        agent_id: state.agent_id.clone(),
        heartbeat_deadline,
        approval_rows,
    }
}

fn agent_row(state: &Agent, occurred_at: DateTime<Utc>) -> AgentRow {
    AgentRow {
        tenant_id: state.tenant_id.clone(),
        agent_id: state.agent_id.clone(),
        status: wire::<AgentStatus>(state.status),
        cpu_percent: state.cpu_percent,
        memory_percent: state.memory_percent,
        gpu_percent: state.gpu_percent,
        running_execution_ids: json(&state.running_execution_ids),
        labels: json(&state.labels),
        timeout_seconds: i32::try_from(state.timeout_seconds).unwrap_or(i32::MAX),
        version: to_i64(state.version),
        last_offset: to_i64(state.offset),
        state: state.encode_to_vec(),
        last_heartbeat_at: time_or(state.last_heartbeat_at.as_ref(), occurred_at),
        online_since: time(state.online_since.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode;
    use crate::decode::tests::execution_event;
    use runcast_contract::StreamKind;

    fn decoded(execution: &str, version: u64, offset: u64) -> Decoded {
        let event = execution_event(execution, version, ExecutionStatus::Running);
        decode(StreamKind::Executions, offset, &event.encode_to_vec()).expect("valid")
    }

    #[test]
    fn a_heartbeat_deadline_is_the_timeout_rounded_up_to_an_eighth_of_it_and_moves_once_per_granule() {
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).expect("a time");
        let base = 1_800_000_000_000; // a multiple of every granule below
        // 2 s: granules of 250 ms.
        assert_eq!(heartbeat_deadline(at(base), 2), at(base + 2_000), "on a granule: exact");
        assert_eq!(heartbeat_deadline(at(base + 1), 2), at(base + 2_250));
        assert_eq!(heartbeat_deadline(at(base + 249), 2), at(base + 2_250), "same granule, same deadline");
        assert_eq!(heartbeat_deadline(at(base + 251), 2), at(base + 2_500));
        // 300 s: an eighth is 37.5 s, capped at 5 s.
        assert_eq!(heartbeat_deadline(at(base + 10), 300), at(base + 305_000));
        assert_eq!(heartbeat_deadline(at(base + 4_999), 300), at(base + 305_000));
        // Never before the exact deadline, never a granule or more after it.
        for timeout in [1, 2, 7, 30, 300, 86_400] {
            let granule = (i64::from(timeout) * 125).min(5_000);
            for offset in [0, 1, 17, 999, 4_321, 123_457] {
                let exact = base + offset + i64::from(timeout) * 1_000;
                let deadline = heartbeat_deadline(at(base + offset), timeout).timestamp_millis();
                assert!(deadline >= exact && deadline < exact + granule, "{timeout} s at +{offset} ms: {deadline}");
            }
        }
    }

    #[test]
    fn the_fold_keeps_the_highest_version_whatever_the_order() {
        let events = [decoded("e1", 1, 1), decoded("e2", 1, 2), decoded("e1", 3, 5), decoded("e1", 2, 4)];
        let mut in_order = Fold::default();
        let mut reversed = Fold::default();
        for event in &events {
            in_order.add(event, true);
        }
        for event in events.iter().rev() {
            reversed.add(event, true);
        }
        let rows: Vec<_> = in_order.executions().collect();
        assert_eq!(rows, reversed.executions().collect::<Vec<_>>());
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].execution_id.as_str(), rows[0].version, rows[0].last_offset), ("e1", 3, 5));
        // The created event was not the latest, its key still reaches the row.
        assert_eq!(rows[0].idempotency_key.as_deref(), Some("key-e1"));
        assert_eq!(in_order.history().len(), 4);
        assert_eq!(in_order.history()[2].stream_offset, 5);
        assert_eq!(in_order.history()[2].event_type, "execution.progress");
    }

    #[test]
    fn an_execution_maps_to_its_columns_and_approval_rows() {
        let mut fold = Fold::default();
        fold.add(&decoded("e1", 2, 9), false);
        assert!(fold.history().is_empty(), "rebuilds skip the history");
        let row = fold.executions().next().expect("one row");
        assert_eq!(row.status, "running");
        assert_eq!(row.progress, 2);
        assert_eq!(row.workflow_id, "wf");
        assert_eq!(row.idempotency_key, None, "only the created event has it");
        let state = Execution::decode(row.state.as_slice()).expect("state bytes");
        assert_eq!(state.offset, 9, "stored state carries its offset");
        assert_eq!(row.approval_rows.len(), 1);
        assert_eq!(row.approval_rows[0].status, "pending");
        let approvals: serde_json::Value = serde_json::from_str(&row.approvals).expect("JSON text");
        assert_eq!(approvals[0]["status"], "pending");
    }
}
