//! The rows one batch writes, as the persister's fold produces them: history rows, the latest
//! read-model row per entity (sorted by key, so two replicas writing overlapping rows lock them in
//! the same order and cannot deadlock), and log lines.

use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRow {
    pub occurred_at: DateTime<Utc>,
    pub event_id: Uuid,
    pub stream: &'static str,
    pub stream_offset: i64,
    pub tenant_id: String,
    pub execution_id: String,
    pub agent_id: String,
    pub workflow_id: String,
    pub event_type: &'static str,
    pub version: i64,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    pub tenant_id: String,
    pub execution_id: String,
    pub workflow_id: String,
    pub status: &'static str,
    pub version: i64,
    pub last_offset: i64,
    pub progress: i16,
    pub current_step: String,
    /// `approvals` and `labels` as JSON text, serialized straight from the state (a
    /// `serde_json::Value` tree per row was a tenth of the persister's CPU, built, cloned, dropped).
    /// Steps are in `state` only (see migration `20261205000002`).
    pub approvals: String,
    pub labels: String,
    pub error: String,
    pub idempotency_key: Option<String>,
    pub state: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The owning agent (empty: none).
    pub agent_id: String,
    /// `updated_at + heartbeat_timeout_seconds` while running with a timeout, else `None`.
    pub heartbeat_deadline: Option<DateTime<Utc>>,
    /// The approvals of `state`, one row each.
    pub approval_rows: Vec<ApprovalRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    pub approval_id: String,
    pub status: &'static str,
    pub reason: String,
    pub deadline: Option<DateTime<Utc>>,
    pub requested_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    pub tenant_id: String,
    pub agent_id: String,
    pub status: &'static str,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub gpu_percent: f64,
    /// JSON text, like the execution's lists.
    pub running_execution_ids: String,
    pub labels: String,
    pub timeout_seconds: i32,
    pub version: i64,
    pub last_offset: i64,
    pub state: Vec<u8>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub online_since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLineRow {
    pub occurred_at: DateTime<Utc>,
    pub tenant_id: String,
    pub execution_id: String,
    pub line_number: i64,
    pub stream_offset: i64,
    pub log_stream: &'static str,
    pub text: String,
}

/// The rows of one transaction, borrowed from whoever folded them.
#[derive(Debug, Default)]
pub struct Batch<'a> {
    pub history: &'a [HistoryRow],
    /// The latest state of each execution, sorted by key, its idempotency key set when known.
    pub executions: Vec<&'a ExecutionRow>,
    /// Idempotency keys of executions whose created event is in the batch (tenant, execution,
    /// key): the created event may arrive after a later version of its execution.
    pub idempotency_keys: Vec<(&'a str, &'a str, &'a str)>,
    /// The latest state of each agent, sorted by key.
    pub agents: Vec<&'a AgentRow>,
    pub log_lines: &'a [LogLineRow],
}
