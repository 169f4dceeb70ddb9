//! What each subcommand does.

use crate::cli::{Cli, Command, Exec, Global, Logs};
use crate::{CliError, api, output};
use runcast_contract::json::parse_wire_name;
use runcast_contract::v1::*;
use runcast_contract::{WireEnum, json};
use std::io::BufRead as _;

pub(crate) async fn run(cli: Cli) -> Result<(), CliError> {
    let global = cli.global;
    match cli.command {
        Command::Token { roles, ttl, sub } => {
            let secret = global
                .jwt_secret
                .as_deref()
                .ok_or_else(|| CliError::usage("RUNCAST_JWT_SECRET is not set: it signs development tokens"))?;
            let roles: Vec<&str> = roles.split(',').map(str::trim).filter(|r| !r.is_empty()).collect();
            for role in &roles {
                if !["viewer", "submitter", "agent", "admin"].contains(role) {
                    return Err(CliError::usage(format!(
                        "unknown role '{role}': expected viewer, submitter, agent or admin"
                    )));
                }
            }
            let token = api::mint(secret, &global.tenant, &roles, &sub, ttl)?;
            if global.json {
                output::json(&serde_json::json!({"token": token}))
            } else {
                println!("{token}")
            }
            Ok(())
        }
        Command::Exec(command) => exec(&global, command).await,
        Command::Logs(Logs::Append { id, stderr, lines, request_id }) => {
            append_logs(&global, id, stderr, lines, &request_id).await
        }
        Command::Logs(Logs::Tail { id, since_offset, count }) => {
            crate::watch::tail(&global, &id, since_offset, count).await
        }
        Command::Events { execution, workflow, types, since, until, limit } => {
            let request = ListEventsRequest {
                execution_id: execution.unwrap_or_default(),
                workflow_id: workflow.unwrap_or_default(),
                types: wire_list::<EventType>("--type", types.as_deref())?,
                since: timestamp("--since", since.as_deref())?,
                until: timestamp("--until", until.as_deref())?,
                page_size: limit,
                page_token: String::new(),
            };
            let page = api::executions(&global).await?.list_events(request).await?.into_inner();
            for event in &page.events {
                output::event(event, global.json);
            }
            Ok(())
        }
        Command::Agents { status } => {
            let request = ListAgentsRequest {
                statuses: wire_list::<AgentStatus>("--status", status.as_deref())?,
                page_size: 500,
                page_token: String::new(),
            };
            let page = api::agents(&global).await?.list_agents(request).await?.into_inner();
            for agent in &page.agents {
                output::agent(agent, global.json);
            }
            Ok(())
        }
        Command::Watch(args) => crate::watch::run(&global, &args).await,
        Command::Simulate {
            agents,
            rate,
            duration,
            no_pick_up,
            approval_percent,
            approval_wait,
            self_decide_percent,
        } => {
            if !(rate > 0.0 && rate <= 10_000.0) {
                return Err(CliError::usage(format!(
                    "--rate {rate} must be between 0 (exclusive) and 10000 executions per second"
                )));
            }
            let approvals =
                crate::simulate::Approvals { percent: approval_percent, wait: approval_wait, self_decide_percent };
            crate::simulate::run(&global, agents, rate, duration, !no_pick_up, approvals).await
        }
    }
}

fn wire_list<E: WireEnum>(flag: &str, list: Option<&str>) -> Result<Vec<i32>, CliError> {
    list.into_iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| parse_wire_name::<E>(name).map_err(|err| CliError::usage(format!("{flag}: {err}"))))
        .collect()
}

fn wire_one<E: WireEnum>(what: &str, name: &str) -> Result<i32, CliError> {
    parse_wire_name::<E>(name).map_err(|err| CliError::usage(format!("{what}: {err}")))
}

fn timestamp(flag: &str, text: Option<&str>) -> Result<Option<prost_types::Timestamp>, CliError> {
    text.map(|t| json::from_rfc3339(t).map_err(|err| CliError::usage(format!("{flag}: {err}")))).transpose()
}

async fn exec(global: &Global, command: Exec) -> Result<(), CliError> {
    // Arguments are checked before connecting, so a mistake is reported as such even when the
    // api is down.
    let client = || api::executions(global);
    let execution = match command {
        Exec::Create { workflow, key, labels, input, heartbeat_timeout } => {
            let input = match input {
                Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                    Ok(serde_json::Value::Object(map)) => Some(json::object_to_struct(map)),
                    Ok(_) => return Err(CliError::usage("--input must be a JSON object")),
                    Err(err) => return Err(CliError::usage(format!("--input is not JSON: {err}"))),
                },
                None => None,
            };
            let request = CreateExecutionRequest {
                workflow_id: workflow,
                idempotency_key: key.unwrap_or_default(),
                labels: labels.into_iter().collect(),
                input,
                heartbeat_timeout_seconds: heartbeat_timeout,
            };
            client().await?.create_execution(request).await?
        }
        Exec::Get { id } => {
            let execution = client().await?.get_execution(GetExecutionRequest { execution_id: id }).await?.into_inner();
            if global.json {
                output::json(&execution);
            } else {
                print!("{}", output::execution_detail(&execution, chrono::Utc::now()));
            }
            return Ok(());
        }
        Exec::List { workflow, status, limit } => {
            let request = ListExecutionsRequest {
                workflow_id: workflow.unwrap_or_default(),
                statuses: wire_list::<ExecutionStatus>("--status", status.as_deref())?,
                page_size: limit,
                page_token: String::new(),
            };
            let page = client().await?.list_executions(request).await?.into_inner();
            for execution in &page.executions {
                output::execution(execution, global.json);
            }
            if !global.json {
                eprintln!("({} shown, as of offset {})", page.executions.len(), page.as_of_offset);
            }
            return Ok(());
        }
        Exec::Cancel { id, reason, retry } => {
            client()
                .await?
                .cancel_execution(CancelExecutionRequest { execution_id: id, reason, request_id: retry.request_id })
                .await?
        }
        Exec::Pause { id, reason, retry } => {
            client()
                .await?
                .pause_execution(PauseExecutionRequest { execution_id: id, reason, request_id: retry.request_id })
                .await?
        }
        Exec::Resume { id, reason, retry } => {
            client()
                .await?
                .resume_execution(ResumeExecutionRequest { execution_id: id, reason, request_id: retry.request_id })
                .await?
        }
        Exec::Status { id, status, message, error, expected_version, agent, retry } => {
            let request = UpdateExecutionStatusRequest {
                execution_id: id,
                status: wire_one::<ExecutionStatus>("status", &status)?,
                message,
                error,
                expected_version: expected_version.unwrap_or(0),
                agent_id: agent,
                request_id: retry.request_id,
            };
            client().await?.update_execution_status(request).await?
        }
        Exec::Step { id, step_id, status, name, error, retry } => {
            let request = ReportStepRequest {
                execution_id: id,
                step_id,
                name,
                status: wire_one::<StepStatus>("status", &status)?,
                error,
                request_id: retry.request_id,
            };
            client().await?.report_step(request).await?
        }
        Exec::Progress { id, percent, step, message, retry } => {
            client()
                .await?
                .report_progress(ReportProgressRequest {
                    execution_id: id,
                    percent,
                    current_step: step,
                    message,
                    request_id: retry.request_id,
                })
                .await?
        }
        Exec::RequestApproval { id, approval_id, reason, expires_in, retry } => {
            let deadline = expires_in
                .map(|after| chrono::Duration::from_std(after).map_err(|_| CliError::usage("--expires-in is too long")))
                .transpose()?
                .map(|after| json::from_datetime(chrono::Utc::now() + after));
            client()
                .await?
                .request_approval(RequestApprovalRequest {
                    execution_id: id,
                    approval_id,
                    reason,
                    deadline,
                    request_id: retry.request_id,
                })
                .await?
        }
        Exec::Approve { id, approval_id, comment, retry } => {
            client()
                .await?
                .resolve_approval(ResolveApprovalRequest {
                    execution_id: id,
                    approval_id,
                    granted: true,
                    comment,
                    request_id: retry.request_id,
                })
                .await?
        }
        Exec::Deny { id, approval_id, comment, retry } => {
            client()
                .await?
                .resolve_approval(ResolveApprovalRequest {
                    execution_id: id,
                    approval_id,
                    granted: false,
                    comment,
                    request_id: retry.request_id,
                })
                .await?
        }
    };
    output::execution(&execution.into_inner(), global.json);
    Ok(())
}

async fn append_logs(
    global: &Global,
    id: String,
    stderr: bool,
    lines: Vec<String>,
    request_id: &str,
) -> Result<(), CliError> {
    let lines = if lines.is_empty() {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| CliError::failed(format!("cannot read standard input: {err}")))?
    } else {
        lines
    };
    if lines.is_empty() {
        return Err(CliError::usage("no lines: pass them as arguments or on standard input"));
    }
    let stream = if stderr { LogStream::Stderr } else { LogStream::Stdout };
    // Chunks of at most 500 lines, one message each, each with its own request id.
    let chunks: Vec<AppendLogsRequest> = lines
        .chunks(500)
        .enumerate()
        .map(|(n, chunk)| AppendLogsRequest {
            execution_id: id.clone(),
            lines: chunk.iter().map(|text| LogLineInput { text: text.clone(), stream: stream.into() }).collect(),
            request_id: if request_id.is_empty() { String::new() } else { format!("{request_id}-{n}") },
        })
        .collect();
    let response = api::executions(global).await?.append_logs(futures::stream::iter(chunks)).await?.into_inner();
    if global.json {
        output::json(&response);
    } else {
        println!("appended {} lines, last line number {}", response.lines_appended, response.last_line_number);
    }
    Ok(())
}
