//! The execution state machine (DESIGN §2):
//!
//! ```text
//! pending → running;  running ⇄ paused;  running → blocked → running (an approval);
//! pending | running | paused | blocked → cancelled;  running → completed | failed
//! ```
//!
//! Terminal states (`completed`, `failed`, `cancelled`) never change again. [`decide`] takes the
//! current state and a command and returns the one event that records the change — its type, its
//! payload and the whole state after it — or the reason the command is refused. Nothing else in
//! the service decides transitions.
//!
//! It also keeps an execution within the bounds of DESIGN §7 (steps, approvals, encoded size):
//! a change that would cross one is refused naming the limit, except a terminal one, for which
//! [`TERMINAL_RESERVE_BYTES`] are always left free.

use prost::Message as _;
use prost_types::Timestamp;
use runcast_contract::WireEnum;
use runcast_contract::v1::{
    Approval, ApprovalChanged, ApprovalStatus, EventType, Execution, ExecutionCreated, ExecutionStatus,
    ProgressReported, StatusChanged, Step, StepChanged, StepStatus, event::Payload,
};
use std::collections::HashMap;

/// At most this many steps per execution.
pub(crate) const MAX_STEPS: usize = 1000;
/// At most this many approvals per execution.
pub(crate) const MAX_APPROVALS: usize = 100;
/// The encoded state never exceeds this.
pub(crate) const MAX_STATE_BYTES: usize = 256 * 1024;
/// Room kept free for the terminal transition (a 4 KiB error, a 4 KiB message, timestamps), so an
/// execution at its limit can still be cancelled, failed or completed.
pub(crate) const TERMINAL_RESERVE_BYTES: usize = 16 * 1024;

/// Everything that can be asked of an execution. Inputs are already validated for shape (ids,
/// lengths, ranges); this decides only whether the change is legal now.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create {
        tenant_id: String,
        execution_id: String,
        workflow_id: String,
        idempotency_key: String,
        labels: HashMap<String, String>,
        input: Option<prost_types::Struct>,
        heartbeat_timeout_seconds: u32,
    },
    SetStatus {
        to: ExecutionStatus,
        message: String,
        error: String,
        /// The reporting agent (empty: not said). Moving to running makes it the owner.
        agent_id: String,
    },
    ReportStep {
        step_id: String,
        name: String,
        status: StepStatus,
        error: String,
    },
    ReportProgress {
        percent: u32,
        current_step: String,
        message: String,
    },
    Cancel {
        reason: String,
    },
    Pause {
        reason: String,
    },
    Resume {
        reason: String,
    },
    RequestApproval {
        approval_id: String,
        reason: String,
        deadline: Option<Timestamp>,
    },
    ResolveApproval {
        approval_id: String,
        granted: bool,
        comment: String,
        resolved_by: String,
    },
    /// Issued by the sweeper for a pending approval past its deadline.
    ExpireApproval {
        approval_id: String,
    },
    /// Issued by the sweeper: the owning agent went offline and stayed away past the grace.
    FailForLostAgent {
        agent_id: String,
    },
    /// Issued by the sweeper: a running execution with `heartbeat_timeout_seconds` had no event
    /// for that long.
    FailForSilence,
}

impl Command {
    /// What the command is called in error messages, metrics and its fingerprint (renaming one
    /// changes its fingerprints: see `fingerprint`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Create { .. } => "create",
            Self::SetStatus { .. } => "set status",
            Self::ReportStep { .. } => "report a step",
            Self::ReportProgress { .. } => "report progress",
            Self::Cancel { .. } => "cancel",
            Self::Pause { .. } => "pause",
            Self::Resume { .. } => "resume",
            Self::RequestApproval { .. } => "request an approval",
            Self::ResolveApproval { .. } => "resolve an approval",
            Self::ExpireApproval { .. } => "expire an approval",
            Self::FailForLostAgent { .. } => "fail for a lost agent",
            Self::FailForSilence => "fail for a missed heartbeat",
        }
    }
}

/// The event a legal command produces.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Change {
    pub event_type: EventType,
    pub payload: Payload,
    /// The whole state after the change, `version` already incremented.
    pub state: Execution,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The command is not legal in the execution's current state.
    #[error("cannot {command} an execution that is {status}{hint}")]
    IllegalTransition { command: &'static str, status: &'static str, hint: &'static str },
    /// The execution exists already (create).
    #[error("execution already exists")]
    AlreadyExists,
    /// The execution does not exist (every command but create).
    #[error("execution not found")]
    NotFound,
    /// The command names something the execution does not have, or repeats something it has.
    #[error("{0}")]
    Conflict(String),
    /// The command's arguments make no sense (e.g. status `unspecified`), or it would cross a
    /// count limit (steps, approvals).
    #[error("{0}")]
    InvalidArgument(String),
    /// The state after the change would be larger than [`MAX_STATE_BYTES`] allows.
    #[error("{0}")]
    TooLarge(String),
}

fn illegal(command: &Command, status: ExecutionStatus, hint: &'static str) -> Refusal {
    Refusal::IllegalTransition { command: command.name(), status: status.wire_name(), hint }
}

fn status_of(execution: &Execution) -> ExecutionStatus {
    ExecutionStatus::try_from(execution.status).unwrap_or(ExecutionStatus::Unspecified)
}

/// The first field in which a create differs from the one that created `existing` (these never
/// change after it), `None` when it asks for the same execution.
fn created_otherwise(existing: &Execution, create: &Command) -> Option<&'static str> {
    let Command::Create { workflow_id, labels, input, heartbeat_timeout_seconds, .. } = create else { return None };
    if *workflow_id != existing.workflow_id {
        Some("workflow_id")
    } else if *labels != existing.labels {
        Some("labels")
    } else if *input != existing.input {
        Some("input")
    } else if *heartbeat_timeout_seconds != existing.heartbeat_timeout_seconds {
        Some("heartbeat_timeout_seconds")
    } else {
        None
    }
}

/// Decides what `command` does to `current` at time `now`.
pub(crate) fn decide(current: Option<&Execution>, command: &Command, now: Timestamp) -> Result<Change, Refusal> {
    let current = match (current, command) {
        (Some(existing), Command::Create { idempotency_key, .. }) => {
            return Err(match created_otherwise(existing, command) {
                None => Refusal::AlreadyExists,
                Some(field) => Refusal::InvalidArgument(format!(
                    "idempotency_key {idempotency_key:?} already created execution {} with another {field}: send \
                     the request as it was first sent to get that execution, or a new key for a new one",
                    existing.execution_id
                )),
            });
        }
        (
            None,
            Command::Create {
                tenant_id,
                execution_id,
                workflow_id,
                idempotency_key,
                labels,
                input,
                heartbeat_timeout_seconds,
            },
        ) => {
            let state = Execution {
                execution_id: execution_id.clone(),
                tenant_id: tenant_id.clone(),
                workflow_id: workflow_id.clone(),
                status: ExecutionStatus::Pending.into(),
                version: 1,
                labels: labels.clone(),
                input: input.clone(),
                heartbeat_timeout_seconds: *heartbeat_timeout_seconds,
                created_at: Some(now),
                updated_at: Some(now),
                ..Default::default()
            };
            let payload = Payload::ExecutionCreated(ExecutionCreated { idempotency_key: idempotency_key.clone() });
            return Ok(Change { event_type: EventType::ExecutionCreated, payload, state });
        }
        (None, _) => return Err(Refusal::NotFound),
        (Some(current), _) => current,
    };

    let status = status_of(current);
    if status.is_terminal() {
        return Err(illegal(command, status, ": finished executions never change"));
    }
    let mut state = current.clone();
    state.version = current.version + 1;
    state.updated_at = Some(now);
    state.offset = 0; // known only once the event is stored

    use ExecutionStatus as S;
    let (event_type, payload) = match command {
        Command::Create { .. } => unreachable!("handled above"),
        Command::SetStatus { to, message, error, agent_id } => {
            let event_type = match (status, *to) {
                (S::Pending, S::Running) => EventType::ExecutionStarted,
                (S::Paused | S::Blocked, S::Running) => EventType::ExecutionResumed,
                (S::Running, S::Paused) => EventType::ExecutionPaused,
                (S::Running, S::Blocked) => EventType::ExecutionBlocked,
                (S::Running, S::Completed) => EventType::ExecutionCompleted,
                (S::Running, S::Failed) => EventType::ExecutionFailed,
                (_, S::Cancelled) => EventType::ExecutionCancelled,
                (_, S::Unspecified) => return Err(Refusal::InvalidArgument("status must be set".into())),
                (from, to) if from == to => {
                    return Err(Refusal::IllegalTransition {
                        command: "set status",
                        status: from.wire_name(),
                        hint: ": it already is",
                    });
                }
                (from, S::Pending) => return Err(illegal(command, from, ": nothing goes back to pending")),
                (from, S::Completed | S::Failed) => {
                    return Err(illegal(command, from, ": only a running execution completes or fails"));
                }
                (from, _) => return Err(illegal(command, from, "")),
            };
            transition(&mut state, *to, now);
            if *to == S::Failed && !error.is_empty() {
                state.error = error.clone();
            }
            if *to == S::Running && !agent_id.is_empty() {
                state.agent_id = agent_id.clone();
            }
            state.status_message = message.clone();
            (event_type, status_changed(status, *to, message, error, ""))
        }
        Command::Cancel { reason } => {
            transition(&mut state, S::Cancelled, now);
            (EventType::ExecutionCancelled, status_changed(status, S::Cancelled, "", "", reason))
        }
        Command::Pause { reason } => {
            if status != S::Running {
                return Err(illegal(command, status, ": only a running execution pauses"));
            }
            transition(&mut state, S::Paused, now);
            (EventType::ExecutionPaused, status_changed(status, S::Paused, "", "", reason))
        }
        Command::Resume { reason } => {
            if status != S::Paused {
                return Err(illegal(command, status, ": only a paused execution resumes"));
            }
            transition(&mut state, S::Running, now);
            (EventType::ExecutionResumed, status_changed(status, S::Running, "", "", reason))
        }
        Command::ReportProgress { percent, current_step, message } => {
            if status == S::Pending {
                return Err(illegal(command, status, ": start it first (status running)"));
            }
            state.progress = *percent;
            if !current_step.is_empty() {
                state.current_step = current_step.clone();
            }
            state.status_message = message.clone();
            let payload =
                ProgressReported { percent: *percent, current_step: current_step.clone(), message: message.clone() };
            (EventType::ExecutionProgress, Payload::ProgressReported(payload))
        }
        Command::ReportStep { step_id, name, status: step_status, error } => {
            if status == S::Pending {
                return Err(illegal(command, status, ": start it first (status running)"));
            }
            let event_type = match step_status {
                StepStatus::Running => EventType::StepStarted,
                StepStatus::Completed => EventType::StepCompleted,
                StepStatus::Failed => EventType::StepFailed,
                StepStatus::Skipped => EventType::StepSkipped,
                // A step announced ahead of time changes the state but has no event type of its own.
                StepStatus::Pending => EventType::ExecutionProgress,
                StepStatus::Unspecified => {
                    return Err(Refusal::InvalidArgument("status of the step must be set".into()));
                }
            };
            upsert_step(&mut state, step_id, name, *step_status, error, now)?;
            if *step_status == StepStatus::Running {
                state.current_step = step_id.clone();
            }
            let payload = StepChanged {
                step_id: step_id.clone(),
                name: name.clone(),
                status: (*step_status).into(),
                error: error.clone(),
            };
            (event_type, Payload::StepChanged(payload))
        }
        Command::RequestApproval { approval_id, reason, deadline } => {
            if !matches!(status, S::Running | S::Blocked) {
                return Err(illegal(command, status, ": approvals are requested by a running execution"));
            }
            if state.approvals.len() >= MAX_APPROVALS {
                return Err(Refusal::InvalidArgument(format!(
                    "approvals: the execution has {MAX_APPROVALS} approvals, the most one execution may have"
                )));
            }
            if state.approvals.iter().any(|a| &a.approval_id == approval_id) {
                return Err(Refusal::Conflict(format!("approval {approval_id} was already requested")));
            }
            state.approvals.push(Approval {
                approval_id: approval_id.clone(),
                status: ApprovalStatus::Pending.into(),
                reason: reason.clone(),
                deadline: *deadline,
                requested_at: Some(now),
                ..Default::default()
            });
            transition(&mut state, S::Blocked, now);
            let payload = ApprovalChanged {
                approval_id: approval_id.clone(),
                status: ApprovalStatus::Pending.into(),
                reason: reason.clone(),
                deadline: *deadline,
                comment: String::new(),
            };
            (EventType::ApprovalRequired, Payload::ApprovalChanged(payload))
        }
        Command::ResolveApproval { approval_id, granted, comment, resolved_by } => {
            let resolution = if *granted { ApprovalStatus::Granted } else { ApprovalStatus::Denied };
            resolve_approval(&mut state, approval_id, resolution, comment, resolved_by, now)?;
            let event_type = if *granted { EventType::ApprovalGranted } else { EventType::ApprovalDenied };
            (event_type, approval_changed(approval_id, resolution, comment))
        }
        Command::ExpireApproval { approval_id } => {
            let due = state.approvals.iter().find(|a| &a.approval_id == approval_id).and_then(|a| a.deadline);
            if due.is_none_or(|deadline| (deadline.seconds, deadline.nanos) > (now.seconds, now.nanos)) {
                return Err(Refusal::Conflict(format!("approval {approval_id} is not past a deadline")));
            }
            resolve_approval(&mut state, approval_id, ApprovalStatus::Expired, "", "", now)?;
            (EventType::ApprovalExpired, approval_changed(approval_id, ApprovalStatus::Expired, ""))
        }
        Command::FailForLostAgent { agent_id } => {
            if !current.agent_id.is_empty() && &current.agent_id != agent_id {
                return Err(Refusal::Conflict(format!("execution is owned by agent {}", current.agent_id)));
            }
            if status == S::Pending {
                return Err(illegal(command, status, ": no agent runs it yet"));
            }
            let error = format!("agent {agent_id} went offline");
            fail(&mut state, status, error, now)
        }
        Command::FailForSilence => {
            let timeout = current.heartbeat_timeout_seconds;
            let last = current.updated_at.map_or(i64::MIN, |at| at.seconds);
            if status != S::Running || timeout == 0 || last.saturating_add(i64::from(timeout)) > now.seconds {
                return Err(Refusal::Conflict("the execution had an event within its heartbeat timeout".into()));
            }
            fail(&mut state, status, format!("no heartbeat for {timeout}s"), now)
        }
    };
    check_size(&state, status)?;
    Ok(Change { event_type, payload, state })
}

/// Ends an execution as failed with `error` (for the sweepers; from any non-terminal state).
fn fail(state: &mut Execution, from: ExecutionStatus, error: String, now: Timestamp) -> (EventType, Payload) {
    state.error = error.clone();
    transition(state, ExecutionStatus::Failed, now);
    (EventType::ExecutionFailed, status_changed(from, ExecutionStatus::Failed, "", &error, ""))
}

/// Refuses a non-terminal change whose state would leave less than [`TERMINAL_RESERVE_BYTES`]
/// below [`MAX_STATE_BYTES`]; a terminal change fits in that reserve and is always accepted.
fn check_size(state: &Execution, from: ExecutionStatus) -> Result<(), Refusal> {
    if status_of(state).is_terminal() {
        return Ok(());
    }
    let size = state.encoded_len();
    let limit = MAX_STATE_BYTES - TERMINAL_RESERVE_BYTES;
    if size > limit {
        return Err(Refusal::TooLarge(format!(
            "state: the execution's state would be {size} bytes, above the limit of {limit} bytes \
             ({MAX_STATE_BYTES} bytes, less {TERMINAL_RESERVE_BYTES} kept for its end) while {}: \
             end it (complete, fail or cancel) or report less",
            from.wire_name()
        )));
    }
    Ok(())
}

/// Sets the status and the timestamps that go with it.
fn transition(state: &mut Execution, to: ExecutionStatus, now: Timestamp) {
    state.status = to.into();
    if to == ExecutionStatus::Running && state.started_at.is_none() {
        state.started_at = Some(now);
    }
    if to.is_terminal() {
        state.finished_at = Some(now);
        if to == ExecutionStatus::Completed {
            state.progress = 100;
        }
    }
}

fn status_changed(from: ExecutionStatus, to: ExecutionStatus, message: &str, error: &str, reason: &str) -> Payload {
    Payload::StatusChanged(StatusChanged {
        from: from.into(),
        to: to.into(),
        message: message.to_owned(),
        error: error.to_owned(),
        reason: reason.to_owned(),
    })
}

fn approval_changed(approval_id: &str, status: ApprovalStatus, comment: &str) -> Payload {
    Payload::ApprovalChanged(ApprovalChanged {
        approval_id: approval_id.to_owned(),
        status: status.into(),
        comment: comment.to_owned(),
        ..Default::default()
    })
}

fn upsert_step(
    state: &mut Execution,
    step_id: &str,
    name: &str,
    status: StepStatus,
    error: &str,
    now: Timestamp,
) -> Result<(), Refusal> {
    let index = match state.steps.iter().position(|s| s.step_id == step_id) {
        Some(index) => index,
        None if state.steps.len() >= MAX_STEPS => {
            return Err(Refusal::InvalidArgument(format!(
                "steps: the execution has {MAX_STEPS} steps, the most one execution may have"
            )));
        }
        None => {
            state.steps.push(Step { step_id: step_id.to_owned(), name: name.to_owned(), ..Default::default() });
            state.steps.len() - 1
        }
    };
    let step = &mut state.steps[index];
    let previous = StepStatus::try_from(step.status).unwrap_or(StepStatus::Unspecified);
    if matches!(previous, StepStatus::Completed | StepStatus::Failed | StepStatus::Skipped) {
        return Err(Refusal::Conflict(format!("step {step_id} is already {}", previous.wire_name())));
    }
    if !name.is_empty() {
        step.name = name.to_owned();
    }
    step.status = status.into();
    if status == StepStatus::Running && step.started_at.is_none() {
        step.started_at = Some(now);
    }
    if matches!(status, StepStatus::Completed | StepStatus::Failed | StepStatus::Skipped) {
        step.finished_at = Some(now);
    }
    if status == StepStatus::Failed {
        step.error = error.to_owned();
    }
    Ok(())
}

/// Marks a pending approval granted, denied or expired and moves the execution on: back to running
/// when no approval is pending any more, to failed when one was denied or expired.
fn resolve_approval(
    state: &mut Execution,
    approval_id: &str,
    resolution: ApprovalStatus,
    comment: &str,
    resolved_by: &str,
    now: Timestamp,
) -> Result<(), Refusal> {
    let approval = state
        .approvals
        .iter_mut()
        .find(|a| a.approval_id == approval_id)
        .ok_or_else(|| Refusal::Conflict(format!("approval {approval_id} was never requested")))?;
    let current = ApprovalStatus::try_from(approval.status).unwrap_or(ApprovalStatus::Unspecified);
    if current != ApprovalStatus::Pending {
        return Err(Refusal::Conflict(format!("approval {approval_id} is already {}", current.wire_name())));
    }
    approval.status = resolution.into();
    approval.resolved_at = Some(now);
    approval.comment = comment.to_owned();
    approval.resolved_by = resolved_by.to_owned();
    match resolution {
        ApprovalStatus::Granted => {
            let still_waiting = state.approvals.iter().any(|a| a.status == i32::from(ApprovalStatus::Pending));
            if !still_waiting && status_of(state) == ExecutionStatus::Blocked {
                transition(state, ExecutionStatus::Running, now);
            }
        }
        _ => {
            state.error = format!("approval {approval_id} {}", resolution.wire_name());
            transition(state, ExecutionStatus::Failed, now);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp { seconds: 1_790_000_000, nanos: 0 };

    fn execution(status: ExecutionStatus) -> Execution {
        Execution {
            execution_id: "e1".into(),
            tenant_id: "acme".into(),
            workflow_id: "wf".into(),
            status: status.into(),
            version: 4,
            offset: 99,
            ..Default::default()
        }
    }

    fn set(to: ExecutionStatus) -> Command {
        Command::SetStatus { to, message: String::new(), error: String::new(), agent_id: String::new() }
    }

    /// Every (state, target status) pair of `SetStatus`, against the table of DESIGN §2.
    #[test]
    fn set_status_follows_the_designed_transitions_exactly() {
        use ExecutionStatus as S;
        let legal: &[(S, S, EventType)] = &[
            (S::Pending, S::Running, EventType::ExecutionStarted),
            (S::Pending, S::Cancelled, EventType::ExecutionCancelled),
            (S::Running, S::Paused, EventType::ExecutionPaused),
            (S::Running, S::Blocked, EventType::ExecutionBlocked),
            (S::Running, S::Completed, EventType::ExecutionCompleted),
            (S::Running, S::Failed, EventType::ExecutionFailed),
            (S::Running, S::Cancelled, EventType::ExecutionCancelled),
            (S::Paused, S::Running, EventType::ExecutionResumed),
            (S::Paused, S::Cancelled, EventType::ExecutionCancelled),
            (S::Blocked, S::Running, EventType::ExecutionResumed),
            (S::Blocked, S::Cancelled, EventType::ExecutionCancelled),
        ];
        for &from in S::ALL.iter().skip(1) {
            for &to in S::ALL {
                let outcome = decide(Some(&execution(from)), &set(to), NOW);
                match legal.iter().find(|(f, t, _)| *f == from && *t == to) {
                    Some((_, _, event_type)) => {
                        let change = outcome.unwrap_or_else(|err| panic!("{from:?} → {to:?} refused: {err}"));
                        assert_eq!(change.event_type, *event_type, "{from:?} → {to:?}");
                        assert_eq!(change.state.status, i32::from(to));
                        assert_eq!(change.state.version, 5);
                        assert_eq!(change.state.updated_at, Some(NOW));
                    }
                    None => {
                        let err = outcome.expect_err(&format!("{from:?} → {to:?} must be refused"));
                        if to == S::Unspecified && !from.is_terminal() {
                            assert!(matches!(err, Refusal::InvalidArgument(_)), "{err}");
                        } else {
                            assert!(matches!(err, Refusal::IllegalTransition { .. }), "{from:?} → {to:?}: {err}");
                            assert!(err.to_string().contains(from.wire_name()), "names the current state: {err}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn terminal_states_refuse_every_command() {
        let commands = [
            set(ExecutionStatus::Running),
            Command::Cancel { reason: String::new() },
            Command::Pause { reason: String::new() },
            Command::Resume { reason: String::new() },
            Command::ReportProgress { percent: 1, current_step: String::new(), message: String::new() },
            Command::ReportStep {
                step_id: "s".into(),
                name: String::new(),
                status: StepStatus::Running,
                error: String::new(),
            },
            Command::RequestApproval { approval_id: "a".into(), reason: String::new(), deadline: None },
            Command::ResolveApproval {
                approval_id: "a".into(),
                granted: true,
                comment: String::new(),
                resolved_by: String::new(),
            },
            Command::ExpireApproval { approval_id: "a".into() },
        ];
        for terminal in [ExecutionStatus::Completed, ExecutionStatus::Failed, ExecutionStatus::Cancelled] {
            for command in &commands {
                let err = decide(Some(&execution(terminal)), command, NOW).expect_err("terminal");
                assert!(err.to_string().contains(terminal.wire_name()), "{err}");
                assert!(err.to_string().contains("never change"), "{err}");
            }
        }
    }

    #[test]
    fn pause_resume_and_cancel_commands() {
        use ExecutionStatus as S;
        let pause = Command::Pause { reason: "maintenance".into() };
        let resume = Command::Resume { reason: String::new() };
        let cancel = Command::Cancel { reason: "user".into() };
        for from in [S::Pending, S::Running, S::Paused, S::Blocked] {
            assert_eq!(decide(Some(&execution(from)), &pause, NOW).is_ok(), from == S::Running, "pause from {from:?}");
            assert_eq!(decide(Some(&execution(from)), &resume, NOW).is_ok(), from == S::Paused, "resume from {from:?}");
            let cancelled = decide(Some(&execution(from)), &cancel, NOW).expect("cancel from any live state");
            assert_eq!(cancelled.event_type, EventType::ExecutionCancelled);
            assert_eq!(cancelled.state.finished_at, Some(NOW));
            assert!(
                matches!(&cancelled.payload, Payload::StatusChanged(c) if c.reason == "user" && c.from == i32::from(from))
            );
        }
    }

    #[test]
    fn create_only_when_absent_and_commands_only_when_present() {
        let create = Command::Create {
            tenant_id: "acme".into(),
            execution_id: "e1".into(),
            workflow_id: "wf".into(),
            idempotency_key: "k".into(),
            labels: HashMap::new(),
            input: None,
            heartbeat_timeout_seconds: 30,
        };
        let change = decide(None, &create, NOW).expect("creates");
        assert_eq!(change.state.heartbeat_timeout_seconds, 30);
        assert_eq!(change.event_type, EventType::ExecutionCreated);
        assert_eq!((change.state.version, change.state.status), (1, i32::from(ExecutionStatus::Pending)));
        assert_eq!(change.state.created_at, Some(NOW));
        assert_eq!(decide(Some(&change.state), &create, NOW), Err(Refusal::AlreadyExists));
        let Command::Create { tenant_id, execution_id, idempotency_key, .. } = &create else { unreachable!() };
        let again = |workflow_id: &str, labels: &[(&str, &str)], input: Option<prost_types::Struct>, timeout: u32| {
            Command::Create {
                tenant_id: tenant_id.clone(),
                execution_id: execution_id.clone(),
                workflow_id: workflow_id.into(),
                idempotency_key: idempotency_key.clone(),
                labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
                input,
                heartbeat_timeout_seconds: timeout,
            }
        };
        let field = prost_types::Struct {
            fields: [("n".to_owned(), prost_types::Value { kind: Some(prost_types::value::Kind::NumberValue(1.0)) })]
                .into(),
        };
        for (otherwise, field) in [
            (again("other-wf", &[], None, 30), "another workflow_id"),
            (again("wf", &[("team", "ml")], None, 30), "another labels"),
            (again("wf", &[], Some(field), 30), "another input"),
            (again("wf", &[], None, 31), "another heartbeat_timeout_seconds"),
        ] {
            let refusal = decide(Some(&change.state), &otherwise, NOW).expect_err("the key names another execution");
            assert!(
                matches!(&refusal, Refusal::InvalidArgument(message) if message.contains(field) && message.contains("e1")),
                "{refusal:?}"
            );
        }
        assert_eq!(decide(Some(&change.state), &again("wf", &[], None, 30), NOW), Err(Refusal::AlreadyExists));
        assert_eq!(decide(None, &Command::Cancel { reason: String::new() }, NOW), Err(Refusal::NotFound));
    }

    #[test]
    fn running_sets_started_at_once_and_completion_sets_progress_and_finished_at() {
        let started =
            decide(Some(&execution(ExecutionStatus::Pending)), &set(ExecutionStatus::Running), NOW).expect("starts");
        assert_eq!(started.state.started_at, Some(NOW));
        let later = Timestamp { seconds: NOW.seconds + 60, nanos: 0 };
        let paused = decide(Some(&started.state), &Command::Pause { reason: String::new() }, later).expect("pauses");
        let resumed = decide(Some(&paused.state), &Command::Resume { reason: String::new() }, later).expect("resumes");
        assert_eq!(resumed.state.started_at, Some(NOW), "resuming keeps the first start");
        let done = decide(Some(&resumed.state), &set(ExecutionStatus::Completed), later).expect("completes");
        assert_eq!((done.state.progress, done.state.finished_at), (100, Some(later)));
        assert_eq!(done.state.version, 8);
    }

    #[test]
    fn failure_records_the_error() {
        let failed = decide(
            Some(&execution(ExecutionStatus::Running)),
            &Command::SetStatus {
                to: ExecutionStatus::Failed,
                message: "m".into(),
                error: "disk full".into(),
                agent_id: String::new(),
            },
            NOW,
        )
        .expect("fails");
        assert_eq!(failed.state.error, "disk full");
        assert!(matches!(&failed.payload, Payload::StatusChanged(c) if c.error == "disk full"));
    }

    #[test]
    fn progress_and_steps_need_a_started_execution() {
        let progress = Command::ReportProgress { percent: 40, current_step: "build".into(), message: "halfway".into() };
        assert!(matches!(
            decide(Some(&execution(ExecutionStatus::Pending)), &progress, NOW),
            Err(Refusal::IllegalTransition { .. })
        ));
        let change = decide(Some(&execution(ExecutionStatus::Running)), &progress, NOW).expect("progress");
        assert_eq!((change.state.progress, change.state.current_step.as_str()), (40, "build"));
        assert_eq!(change.event_type, EventType::ExecutionProgress);
    }

    #[test]
    fn steps_move_forward_and_finished_steps_stay_finished() {
        let step = |status| Command::ReportStep {
            step_id: "build".into(),
            name: "Build".into(),
            status,
            error: "boom".into(),
        };
        let mut state = execution(ExecutionStatus::Running);
        let expectations = [
            (StepStatus::Pending, EventType::ExecutionProgress),
            (StepStatus::Running, EventType::StepStarted),
            (StepStatus::Failed, EventType::StepFailed),
        ];
        for (status, event_type) in expectations {
            let change = decide(Some(&state), &step(status), NOW).expect("legal step change");
            assert_eq!(change.event_type, event_type);
            state = change.state;
        }
        assert_eq!(state.steps.len(), 1);
        assert_eq!((state.steps[0].status, state.steps[0].error.as_str()), (i32::from(StepStatus::Failed), "boom"));
        assert_eq!(state.current_step, "build");
        let err = decide(Some(&state), &step(StepStatus::Completed), NOW).expect_err("already failed");
        assert!(matches!(err, Refusal::Conflict(_)) && err.to_string().contains("already failed"), "{err}");
        assert!(matches!(decide(Some(&state), &step(StepStatus::Unspecified), NOW), Err(Refusal::InvalidArgument(_))));
    }

    fn request(id: &str) -> Command {
        Command::RequestApproval { approval_id: id.into(), reason: "deploy to prod".into(), deadline: Some(NOW) }
    }

    fn resolve(id: &str, granted: bool) -> Command {
        Command::ResolveApproval { approval_id: id.into(), granted, comment: "ok".into(), resolved_by: "bob".into() }
    }

    #[test]
    fn approvals_block_until_every_one_is_granted() {
        let first = decide(Some(&execution(ExecutionStatus::Running)), &request("a"), NOW).expect("requests");
        assert_eq!(first.event_type, EventType::ApprovalRequired);
        assert_eq!(first.state.status, i32::from(ExecutionStatus::Blocked));
        let second = decide(Some(&first.state), &request("b"), NOW).expect("a second while blocked");
        assert!(matches!(decide(Some(&second.state), &request("a"), NOW), Err(Refusal::Conflict(_))));

        let granted_a = decide(Some(&second.state), &resolve("a", true), NOW).expect("grants a");
        assert_eq!(granted_a.event_type, EventType::ApprovalGranted);
        assert_eq!(granted_a.state.status, i32::from(ExecutionStatus::Blocked), "b is still pending");
        let granted_b = decide(Some(&granted_a.state), &resolve("b", true), NOW).expect("grants b");
        assert_eq!(granted_b.state.status, i32::from(ExecutionStatus::Running));
        assert_eq!(granted_b.state.approvals[1].resolved_by, "bob");
        assert!(matches!(decide(Some(&granted_b.state), &resolve("b", false), NOW), Err(Refusal::Conflict(_))));
        assert!(matches!(decide(Some(&granted_b.state), &resolve("zzz", true), NOW), Err(Refusal::Conflict(_))));
    }

    #[test]
    fn a_denied_or_expired_approval_fails_the_execution() {
        let blocked = decide(Some(&execution(ExecutionStatus::Running)), &request("a"), NOW).expect("requests").state;
        let denied = decide(Some(&blocked), &resolve("a", false), NOW).expect("denies");
        assert_eq!(
            (denied.event_type, denied.state.status),
            (EventType::ApprovalDenied, i32::from(ExecutionStatus::Failed))
        );
        assert_eq!(denied.state.error, "approval a denied");
        let early = Timestamp { seconds: NOW.seconds - 1, nanos: 0 };
        assert!(matches!(
            decide(Some(&blocked), &Command::ExpireApproval { approval_id: "a".into() }, early),
            Err(Refusal::Conflict(_))
        ));
        let expired =
            decide(Some(&blocked), &Command::ExpireApproval { approval_id: "a".into() }, NOW).expect("expires");
        assert_eq!(
            (expired.event_type, expired.state.status),
            (EventType::ApprovalExpired, i32::from(ExecutionStatus::Failed))
        );
        assert_eq!(expired.state.approvals[0].status, i32::from(ApprovalStatus::Expired));
    }

    #[test]
    fn approvals_are_requested_by_running_executions_only() {
        for status in [ExecutionStatus::Pending, ExecutionStatus::Paused] {
            assert!(matches!(
                decide(Some(&execution(status)), &request("a"), NOW),
                Err(Refusal::IllegalTransition { .. })
            ));
        }
    }

    fn step(step_id: &str, status: StepStatus, error: &str) -> Command {
        Command::ReportStep { step_id: step_id.into(), name: String::new(), status, error: error.into() }
    }

    #[test]
    fn the_agent_that_starts_an_execution_owns_it_and_keeps_it() {
        let start = Command::SetStatus {
            to: ExecutionStatus::Running,
            message: String::new(),
            error: String::new(),
            agent_id: "agent-7".into(),
        };
        let running = decide(Some(&execution(ExecutionStatus::Pending)), &start, NOW).expect("starts").state;
        assert_eq!(running.agent_id, "agent-7");
        let progressed = decide(
            Some(&running),
            &Command::ReportProgress { percent: 5, current_step: String::new(), message: String::new() },
            NOW,
        )
        .expect("progress")
        .state;
        assert_eq!(progressed.agent_id, "agent-7", "every later state names the owner");
        // Another agent's status report without a move to running does not take it over.
        let paused = decide(
            Some(&progressed),
            &Command::SetStatus {
                to: ExecutionStatus::Paused,
                message: String::new(),
                error: String::new(),
                agent_id: "agent-8".into(),
            },
            NOW,
        )
        .expect("pauses")
        .state;
        assert_eq!(paused.agent_id, "agent-7");
    }

    #[test]
    fn a_lost_agent_fails_what_it_owns_from_any_active_state() {
        let lost = Command::FailForLostAgent { agent_id: "agent-7".into() };
        for status in [ExecutionStatus::Running, ExecutionStatus::Paused, ExecutionStatus::Blocked] {
            let owned = Execution { agent_id: "agent-7".into(), ..execution(status) };
            let change = decide(Some(&owned), &lost, NOW).expect("fails");
            assert_eq!(change.event_type, EventType::ExecutionFailed);
            assert_eq!(change.state.status, i32::from(ExecutionStatus::Failed));
            assert_eq!(change.state.error, "agent agent-7 went offline");
            assert_eq!(change.state.finished_at, Some(NOW));
        }
        let other = Execution { agent_id: "agent-8".into(), ..execution(ExecutionStatus::Running) };
        assert!(matches!(decide(Some(&other), &lost, NOW), Err(Refusal::Conflict(_))));
        assert!(decide(Some(&execution(ExecutionStatus::Pending)), &lost, NOW).is_err());
        assert!(decide(Some(&execution(ExecutionStatus::Completed)), &lost, NOW).is_err());
    }

    #[test]
    fn a_silent_execution_fails_only_after_its_timeout() {
        let last = Timestamp { seconds: NOW.seconds - 10, nanos: 0 };
        let watched =
            Execution { heartbeat_timeout_seconds: 10, updated_at: Some(last), ..execution(ExecutionStatus::Running) };
        let change = decide(Some(&watched), &Command::FailForSilence, NOW).expect("fails at the timeout");
        assert_eq!(change.state.error, "no heartbeat for 10s");
        assert_eq!(change.state.status, i32::from(ExecutionStatus::Failed));
        let early = Timestamp { seconds: NOW.seconds - 1, nanos: 0 };
        assert!(matches!(decide(Some(&watched), &Command::FailForSilence, early), Err(Refusal::Conflict(_))));
        let unwatched = Execution { heartbeat_timeout_seconds: 0, ..watched.clone() };
        assert!(decide(Some(&unwatched), &Command::FailForSilence, NOW).is_err());
        let paused = Execution { status: ExecutionStatus::Paused.into(), ..watched };
        assert!(decide(Some(&paused), &Command::FailForSilence, NOW).is_err(), "only running executions");
    }

    #[test]
    fn steps_and_approvals_are_bounded_in_number() {
        let mut state = execution(ExecutionStatus::Running);
        state.steps = (0..MAX_STEPS - 1)
            .map(|n| Step { step_id: format!("s{n}"), status: StepStatus::Completed.into(), ..Default::default() })
            .collect();
        let last = decide(Some(&state), &step("last", StepStatus::Running, ""), NOW).expect("the 1000th step");
        assert_eq!(last.state.steps.len(), MAX_STEPS);
        let err = decide(Some(&last.state), &step("one-more", StepStatus::Running, ""), NOW).expect_err("1001st");
        assert!(matches!(err, Refusal::InvalidArgument(_)));
        assert!(err.to_string().contains("1000 steps"), "names the limit: {err}");
        // An existing step still moves on at the limit.
        decide(Some(&last.state), &step("last", StepStatus::Completed, ""), NOW).expect("known step");

        let mut blocked = execution(ExecutionStatus::Running);
        blocked.approvals = (0..MAX_APPROVALS - 1)
            .map(|n| Approval {
                approval_id: format!("a{n}"),
                status: ApprovalStatus::Granted.into(),
                ..Default::default()
            })
            .collect();
        let full = decide(Some(&blocked), &request("last"), NOW).expect("the 100th approval").state;
        let err = decide(Some(&full), &request("one-more"), NOW).expect_err("101st");
        assert!(err.to_string().contains("100 approvals"), "names the limit: {err}");
    }

    #[test]
    fn state_stays_below_its_byte_limit_and_terminal_changes_always_fit() {
        let error = "e".repeat(4096);
        let mut state = execution(ExecutionStatus::Running);
        let mut refused = None;
        for n in 0..MAX_STEPS {
            match decide(Some(&state), &step(&format!("s{n}"), StepStatus::Failed, &error), NOW) {
                Ok(change) => state = change.state,
                Err(err) => {
                    refused = Some(err);
                    break;
                }
            }
        }
        let refused = refused.expect("4 KiB errors reach the byte limit before the step limit");
        assert!(matches!(refused, Refusal::TooLarge(_)), "{refused}");
        assert!(refused.to_string().contains(&format!("limit of {}", MAX_STATE_BYTES - TERMINAL_RESERVE_BYTES)));
        assert!(state.encoded_len() <= MAX_STATE_BYTES - TERMINAL_RESERVE_BYTES);
        // Progress on a full execution is refused too; every terminal change is accepted and fits.
        let progress = Command::ReportProgress { percent: 50, current_step: "x".repeat(256), message: error.clone() };
        assert!(matches!(decide(Some(&state), &progress, NOW), Err(Refusal::TooLarge(_))));
        let fail = Command::SetStatus {
            to: ExecutionStatus::Failed,
            message: error.clone(),
            error: error.clone(),
            agent_id: String::new(),
        };
        for command in [Command::Cancel { reason: error.clone() }, fail, set(ExecutionStatus::Completed)] {
            let end = decide(Some(&state), &command, NOW).expect("terminal changes are always accepted");
            assert!(end.state.encoded_len() <= MAX_STATE_BYTES, "{} bytes", end.state.encoded_len());
        }
    }
}
