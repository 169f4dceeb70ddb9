//! What each subcommand does.

use crate::cli::{Cli, Command, Exec, Global, Logs, given_or_made_up};
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
        Command::Logs(Logs::Append { id, stderr, lines, request_id, retries }) => {
            append_logs(&global, id, stderr, lines, (&request_id, retries)).await
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

/// A command that changes an execution, ready to be sent (and sent again by `--retries`).
#[derive(Debug, Clone)]
enum Write {
    Create(CreateExecutionRequest),
    Cancel(CancelExecutionRequest),
    Pause(PauseExecutionRequest),
    Resume(ResumeExecutionRequest),
    Status(UpdateExecutionStatusRequest),
    Step(ReportStepRequest),
    Progress(ReportProgressRequest),
    RequestApproval(RequestApprovalRequest),
    ResolveApproval(ResolveApprovalRequest),
}

impl Write {
    async fn send(self, global: &Global) -> Result<Execution, CliError> {
        let mut client = api::executions(global).await?;
        let response = match self {
            Self::Create(request) => client.create_execution(request).await?,
            Self::Cancel(request) => client.cancel_execution(request).await?,
            Self::Pause(request) => client.pause_execution(request).await?,
            Self::Resume(request) => client.resume_execution(request).await?,
            Self::Status(request) => client.update_execution_status(request).await?,
            Self::Step(request) => client.report_step(request).await?,
            Self::Progress(request) => client.report_progress(request).await?,
            Self::RequestApproval(request) => client.request_approval(request).await?,
            Self::ResolveApproval(request) => client.resolve_approval(request).await?,
        };
        Ok(response.into_inner())
    }
}

/// The wait before the first retry of `--retries`, doubled before each next one.
const FIRST_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// The longest wait between two tries.
const MAX_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(30);

/// `send` once, and again after each failure that may pass, `retries` times at most, `delay`,
/// twice that, … apart; each retry is said on stderr (stdout keeps the result alone).
async fn retrying<T, F: Future<Output = Result<T, CliError>>>(
    (retries, mut delay): (u32, std::time::Duration),
    mut send: impl FnMut() -> F,
) -> Result<T, CliError> {
    let mut retried = 0;
    loop {
        match send().await {
            Err(err) if err.is_transient() && retried < retries => {
                retried += 1;
                eprintln!("runcast: {err}; trying again in {} s ({retried} of {retries})", delay.as_secs_f32());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
            result => return result,
        }
    }
}

async fn exec(global: &Global, command: Exec) -> Result<(), CliError> {
    // Arguments are checked before connecting, so a mistake is reported as such even when the
    // api is down.
    let client = || api::executions(global);
    let (write, retries) = match command {
        Exec::Create { workflow, key, labels, input, heartbeat_timeout, retries } => {
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
                // Sent more than once, a create needs a key to make one execution.
                idempotency_key: given_or_made_up(&key.unwrap_or_default(), retries),
                labels: labels.into_iter().collect(),
                input,
                heartbeat_timeout_seconds: heartbeat_timeout,
            };
            (Write::Create(request), retries)
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
            let request = CancelExecutionRequest { execution_id: id, reason, request_id: retry.request_id() };
            (Write::Cancel(request), retry.retries)
        }
        Exec::Pause { id, reason, retry } => {
            let request = PauseExecutionRequest { execution_id: id, reason, request_id: retry.request_id() };
            (Write::Pause(request), retry.retries)
        }
        Exec::Resume { id, reason, retry } => {
            let request = ResumeExecutionRequest { execution_id: id, reason, request_id: retry.request_id() };
            (Write::Resume(request), retry.retries)
        }
        Exec::Status { id, status, message, error, expected_version, agent, retry } => {
            let request = UpdateExecutionStatusRequest {
                execution_id: id,
                status: wire_one::<ExecutionStatus>("status", &status)?,
                message,
                error,
                expected_version: expected_version.unwrap_or(0),
                agent_id: agent,
                request_id: retry.request_id(),
            };
            (Write::Status(request), retry.retries)
        }
        Exec::Step { id, step_id, status, name, error, retry } => {
            let request = ReportStepRequest {
                execution_id: id,
                step_id,
                name,
                status: wire_one::<StepStatus>("status", &status)?,
                error,
                request_id: retry.request_id(),
            };
            (Write::Step(request), retry.retries)
        }
        Exec::Progress { id, percent, step, message, retry } => {
            let request = ReportProgressRequest {
                execution_id: id,
                percent,
                current_step: step,
                message,
                request_id: retry.request_id(),
            };
            (Write::Progress(request), retry.retries)
        }
        Exec::RequestApproval { id, approval_id, reason, expires_in, retry } => {
            let deadline = expires_in
                .map(|after| chrono::Duration::from_std(after).map_err(|_| CliError::usage("--expires-in is too long")))
                .transpose()?
                .map(|after| json::from_datetime(chrono::Utc::now() + after));
            let request = RequestApprovalRequest {
                execution_id: id,
                approval_id,
                reason,
                deadline,
                request_id: retry.request_id(),
            };
            (Write::RequestApproval(request), retry.retries)
        }
        Exec::Approve { id, approval_id, comment, retry } => {
            let request = ResolveApprovalRequest {
                execution_id: id,
                approval_id,
                granted: true,
                comment,
                request_id: retry.request_id(),
            };
            (Write::ResolveApproval(request), retry.retries)
        }
        Exec::Deny { id, approval_id, comment, retry } => {
            let request = ResolveApprovalRequest {
                execution_id: id,
                approval_id,
                granted: false,
                comment,
                request_id: retry.request_id(),
            };
            (Write::ResolveApproval(request), retry.retries)
        }
    };
    let execution = retrying((retries, FIRST_RETRY_DELAY), || write.clone().send(global)).await?;
    output::execution(&execution, global.json);
    Ok(())
}

async fn append_logs(
    global: &Global,
    id: String,
    stderr: bool,
    lines: Vec<String>,
    (request_id, retries): (&str, u32),
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
    // Sent more than once, the lines need an id to be appended once.
    let request_id = given_or_made_up(request_id, retries);
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
    let send = || async {
        let mut client = api::executions(global).await?;
        Ok::<_, CliError>(client.append_logs(futures::stream::iter(chunks.clone())).await?.into_inner())
    };
    let response = retrying((retries, FIRST_RETRY_DELAY), send).await?;
    if global.json {
        output::json(&response);
    } else {
        println!("appended {} lines, last line number {}", response.lines_appended, response.last_line_number);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    /// A `send` that fails with `failures` in turn, then succeeds; counts its calls.
    fn scripted(
        failures: Vec<CliError>,
        calls: &Cell<usize>,
    ) -> impl FnMut() -> std::future::Ready<Result<u32, CliError>> + '_ {
        let mut failures = failures.into_iter();
        move || {
            calls.set(calls.get() + 1);
            std::future::ready(match failures.next() {
                Some(err) => Err(err),
                None => Ok(7),
            })
        }
    }

    #[tokio::test]
    async fn failures_that_may_pass_are_retried_as_often_as_asked_and_no_others() {
        let unavailable = || CliError::unavailable("cannot reach execution-api");
        let calls = Cell::new(0);
        let retried =
            retrying((3, Duration::from_millis(1)), scripted(vec![unavailable(), unavailable()], &calls)).await;
        assert_eq!((retried.ok(), calls.get()), (Some(7), 3), "two failures, then the answer");

        let calls = Cell::new(0);
        let exhausted =
            retrying((1, Duration::from_millis(1)), scripted(vec![unavailable(), unavailable()], &calls)).await;
        assert!(exhausted.is_err_and(|err| err.is_transient()), "one retry, still unavailable: its error");
        assert_eq!(calls.get(), 2);

        let calls = Cell::new(0);
        let refused = CliError::from(tonic::Status::failed_precondition("already running"));
        let once = retrying((5, Duration::from_millis(1)), scripted(vec![refused], &calls)).await;
        assert!(once.is_err() && calls.get() == 1, "a refusal is an answer: not sent again");

        let calls = Cell::new(0);
        let unasked = retrying((0, Duration::from_millis(1)), scripted(vec![unavailable()], &calls)).await;
        assert!(unasked.is_err() && calls.get() == 1, "no --retries, no retry");
    }

    #[test]
    fn which_answers_may_pass() {
        for code in [tonic::Code::Unavailable, tonic::Code::DeadlineExceeded] {
            assert!(CliError::from(tonic::Status::new(code, "x")).is_transient(), "{code:?}");
        }
        for code in [
            tonic::Code::FailedPrecondition,
            tonic::Code::InvalidArgument,
            tonic::Code::Aborted,
            tonic::Code::ResourceExhausted,
        ] {
            assert!(!CliError::from(tonic::Status::new(code, "x")).is_transient(), "{code:?}");
        }
        // The api's admission refusals say when to try again; a state too large does not.
        let mut busy = tonic::Status::resource_exhausted("the tenant has its maximum of requests in flight");
        busy.metadata_mut()
            .insert(runcast_contract::client::RETRY_PUSHBACK, tonic::metadata::MetadataValue::from(1000));
        assert!(CliError::from(busy).is_transient());
    }

    #[test]
    fn a_command_sent_more_than_once_gets_a_request_id_of_its_own_unless_given_one() {
        use crate::cli::Retry;
        let made_up = Retry { request_id: String::new(), retries: 2 }.request_id();
        assert!(uuid::Uuid::parse_str(&made_up).is_ok(), "{made_up}");
        assert_ne!(made_up, Retry { request_id: String::new(), retries: 2 }.request_id(), "one per run");
        assert_eq!(Retry { request_id: "mine".into(), retries: 2 }.request_id(), "mine");
        assert_eq!(Retry { request_id: String::new(), retries: 0 }.request_id(), "", "sent once: none needed");
    }
}
