//! The current state `watch` starts from: the entities of a channel as the read model holds them
//! (`ListExecutions` / `ListAgents`, or `GetExecution` for one), and the offset to follow the
//! gateway from (`as_of_offset`: every event at or below it is in the list, so subscribing with
//! `since_offset` = it misses nothing; events the list already reflects are dropped by version).

use crate::cli::{Global, WatchArgs};
use crate::{CliError, api};
use runcast_contract::WireEnum;
use runcast_contract::json::parse_wire_name;
use runcast_contract::v1::{
    AgentStatus, ExecutionStatus, GetExecutionRequest, ListAgentsRequest, ListExecutionsRequest,
};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;

/// At most this many entities are loaded per query: the table shows a screenful, and a pipe
/// gets the newest and the active ones.
pub(crate) const MAX_ENTITIES: usize = 1000;
const PAGE_SIZE: u32 = 200;

pub(crate) struct Start {
    /// `snapshot` frames (`{"type": "snapshot", "timestamp", "channel", "offset", "data"}`, as the
    /// gateway sends them), oldest first.
    pub frames: Vec<Value>,
    /// Where to follow the gateway from.
    pub since_offset: Option<u64>,
    /// More entities matched than were loaded.
    pub truncated: bool,
    /// The api could not answer: live events only.
    pub unavailable: bool,
}

impl Start {
    pub(crate) fn empty(since_offset: Option<u64>) -> Self {
        Self { frames: Vec::new(), since_offset, truncated: false, unavailable: false }
    }
}

enum Source {
    /// `executions`, `workflows:{id}`, `approvals`.
    Executions {
        workflow: Option<String>,
        approvals: bool,
    },
    Execution(String),
    Agents {
        id: Option<String>,
    },
    Logs,
    Unknown,
}

fn source(channel: &str) -> Source {
    match channel.split_once(':') {
        None if channel == "executions" => Source::Executions { workflow: None, approvals: false },
        None if channel == "approvals" => Source::Executions { workflow: None, approvals: true },
        None if channel == "agents" => Source::Agents { id: None },
        Some(("workflows", id)) => Source::Executions { workflow: Some(id.to_owned()), approvals: false },
        Some(("executions", id)) => Source::Execution(id.to_owned()),
        Some(("agents", id)) => Source::Agents { id: Some(id.to_owned()) },
        Some(("logs", _)) => Source::Logs,
        _ => Source::Unknown,
    }
}

fn list(value: Option<&str>) -> Vec<String> {
    value.into_iter().flat_map(|v| v.split(',')).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn statuses<E: WireEnum>(value: Option<&str>) -> Result<Vec<i32>, CliError> {
    list(value)
        .iter()
        .map(|name| parse_wire_name::<E>(name).map_err(|err| CliError::usage(format!("--status: {err}"))))
        .collect()
}

fn snapshot<T: Serialize>(channel: &str, offset: u64, entity: &T) -> Result<Value, CliError> {
    let data =
        serde_json::to_value(entity).map_err(|err| CliError::failed(format!("cannot encode the state: {err}")))?;
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    Ok(json!({"type": "snapshot", "timestamp": timestamp, "channel": channel, "offset": offset, "data": data}))
}

/// What to load, checked before anything is called: a bad value is a usage error.
pub(crate) struct Plan {
    source: Source,
    /// The `--status` values as wire numbers (agent or execution statuses, by channel).
    wanted: Vec<i32>,
}

pub(crate) fn plan(args: &WatchArgs) -> Result<Plan, CliError> {
    let source = source(&args.channel);
    let wanted = if matches!(source, Source::Agents { .. }) {
        statuses::<AgentStatus>(args.status.as_deref())?
    } else {
        statuses::<ExecutionStatus>(args.status.as_deref())?
    };
    Ok(Plan { source, wanted })
}

/// Why the state could not be loaded.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// Nothing to watch: the execution does not exist, the token may not read it.
    Fatal(CliError),
    /// The api or its read model cannot answer now (down, overloaded, PostgreSQL unreachable):
    /// the live feed may still work.
    Unavailable(CliError),
}

impl From<tonic::Status> for LoadError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let fatal = matches!(
            status.code(),
            Code::NotFound | Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated
        );
        if fatal { Self::Fatal(status.into()) } else { Self::Unavailable(status.into()) }
    }
}

impl From<CliError> for LoadError {
    fn from(error: CliError) -> Self {
        match error.kind() {
            crate::ErrorKind::Usage => Self::Fatal(error),
            crate::ErrorKind::Failed => Self::Unavailable(error),
        }
    }
}

/// Loads the state (unless `--since-offset` asks for a replay instead).
pub(crate) async fn load(global: &Global, args: &WatchArgs, plan: Plan) -> Result<Start, LoadError> {
    let Plan { source, wanted } = plan;
    let nothing = |since_offset| Ok(Start::empty(since_offset));
    if let Some(offset) = args.since_offset {
        return nothing(Some(offset));
    }
    let ids = list(args.execution.as_deref());
    let workflows = list(args.workflow.as_deref());
    match source {
        Source::Logs => nothing(Some(0)), // a log's state is its history: from the first line
        Source::Unknown => nothing(None), // the gateway names what is wrong with it
        Source::Execution(id) => {
            let execution =
                api::executions(global).await?.get_execution(GetExecutionRequest { execution_id: id }).await?;
            let execution = execution.into_inner();
            Ok(Start {
                frames: vec![snapshot(&args.channel, execution.offset, &execution)?],
                since_offset: Some(execution.offset),
                truncated: false,
                unavailable: false,
            })
        }
        Source::Executions { workflow, approvals } => {
            let mut client = api::executions(global).await?;
            // Active ones first (all of them, up to the cap), then the newest of any status.
            let queries: Vec<Vec<i32>> = if !wanted.is_empty() {
                vec![wanted]
            } else if approvals {
                vec![vec![ExecutionStatus::Blocked.into()]]
            } else {
                let active = [
                    ExecutionStatus::Pending,
                    ExecutionStatus::Running,
                    ExecutionStatus::Paused,
                    ExecutionStatus::Blocked,
                ];
                vec![active.into_iter().map(Into::into).collect(), Vec::new()]
            };
            let workflow_ids: Vec<String> = match (workflow, workflows.is_empty()) {
                (Some(id), _) => vec![id],
                (None, true) => vec![String::new()],
                (None, false) => workflows,
            };
            let mut found = HashMap::new();
            let mut as_of: Option<u64> = None;
            let mut truncated = false;
            for workflow_id in &workflow_ids {
                for (index, statuses) in queries.iter().enumerate() {
                    let mut page_token = String::new();
                    let mut loaded = 0usize;
                    loop {
                        let request = ListExecutionsRequest {
                            workflow_id: workflow_id.clone(),
                            statuses: statuses.clone(),
                            page_size: PAGE_SIZE,
                            page_token: page_token.clone(),
                        };
                        let page = client.list_executions(request).await?.into_inner();
                        as_of = Some(as_of.map_or(page.as_of_offset, |at| at.min(page.as_of_offset)));
                        loaded += page.executions.len();
                        for execution in page.executions {
                            if ids.is_empty() || ids.contains(&execution.execution_id) {
                                found.insert(execution.execution_id.clone(), execution);
                            }
                        }
                        page_token = page.next_page_token;
                        // The newest of any status: one page is what a screen shows.
                        let newest_only = queries.len() > 1 && index == queries.len() - 1;
                        if page_token.is_empty() || newest_only {
                            break;
                        }
                        if loaded >= MAX_ENTITIES {
                            truncated = true;
                            break;
                        }
                    }
                }
            }
            let mut executions: Vec<_> = found.into_values().collect();
            executions.sort_by_key(|execution| execution.offset);
            let frames = executions
                .iter()
                .map(|execution| snapshot(&args.channel, execution.offset, execution))
                .collect::<Result<_, _>>()?;
            Ok(Start { frames, since_offset: as_of, truncated, unavailable: false })
        }
        Source::Agents { id } => {
            let mut client = api::agents(global).await?;
            let mut page_token = String::new();
            let mut agents = Vec::new();
            let mut as_of: Option<u64> = None;
            let mut truncated = false;
            loop {
                let request = ListAgentsRequest {
                    statuses: wanted.clone(),
                    page_size: PAGE_SIZE,
                    page_token: page_token.clone(),
                };
                let page = client.list_agents(request).await?.into_inner();
                as_of = Some(as_of.map_or(page.as_of_offset, |at| at.min(page.as_of_offset)));
                agents
                    .extend(page.agents.into_iter().filter(|agent| id.as_ref().is_none_or(|id| *id == agent.agent_id)));
                page_token = page.next_page_token;
                if page_token.is_empty() {
                    break;
                }
                if agents.len() >= MAX_ENTITIES {
                    truncated = true;
                    break;
                }
            }
            agents.sort_by_key(|agent| agent.offset);
            let frames =
                agents.iter().map(|agent| snapshot(&args.channel, agent.offset, agent)).collect::<Result<_, _>>()?;
            Ok(Start { frames, since_offset: as_of, truncated, unavailable: false })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(channel: &str, status: Option<&str>) -> WatchArgs {
        WatchArgs {
            channel: channel.into(),
            workflow: None,
            execution: None,
            status: status.map(str::to_owned),
            types: None,
            since_offset: None,
            count: None,
        }
    }

    #[test]
    fn statuses_are_checked_against_the_channel_s_entities() {
        assert!(plan(&args("executions", Some("running,blocked"))).is_ok());
        assert!(plan(&args("agents", Some("online, busy"))).is_ok());
        for (channel, status) in [("executions", "online"), ("agents", "running"), ("workflows:w", "sideways")] {
            let err = plan(&args(channel, Some(status))).err().expect("refused");
            assert_eq!(err.kind(), crate::ErrorKind::Usage, "{channel} --status {status}: {}", err.message());
            assert!(err.message().starts_with("--status"), "{}", err.message());
        }
    }

    #[test]
    fn each_channel_has_its_source() {
        assert!(matches!(source("executions"), Source::Executions { workflow: None, approvals: false }));
        assert!(matches!(source("approvals"), Source::Executions { workflow: None, approvals: true }));
        assert!(matches!(source("workflows:w1"), Source::Executions { workflow: Some(w), .. } if w == "w1"));
        assert!(matches!(source("executions:e1"), Source::Execution(id) if id == "e1"));
        assert!(matches!(source("agents"), Source::Agents { id: None }));
        assert!(matches!(source("agents:a1"), Source::Agents { id: Some(id) } if id == "a1"));
        assert!(matches!(source("logs:e1"), Source::Logs));
        assert!(matches!(source("jobs"), Source::Unknown));
    }

    #[test]
    fn unavailable_reads_fall_back_to_live_and_the_rest_end_the_watch() {
        assert!(matches!(LoadError::from(tonic::Status::unavailable("nats")), LoadError::Unavailable(_)));
        assert!(matches!(LoadError::from(tonic::Status::resource_exhausted("busy")), LoadError::Unavailable(_)));
        assert!(matches!(LoadError::from(tonic::Status::not_found("e1")), LoadError::Fatal(_)));
        assert!(matches!(LoadError::from(tonic::Status::permission_denied("no")), LoadError::Fatal(_)));
        assert!(matches!(LoadError::from(CliError::failed("cannot reach")), LoadError::Unavailable(_)));
        assert!(matches!(LoadError::from(CliError::usage("--api-url")), LoadError::Fatal(_)));
    }
}
