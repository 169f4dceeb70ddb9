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

use prost_types::Timestamp;
use runcast_contract::WireEnum;
use runcast_contract::v1::{
    Approval, ApprovalChanged, ApprovalStatus, EventType, Execution, ExecutionCreated, ExecutionStatus,
    ProgressReported, StatusChanged, Step, StepChanged, StepStatus, event::Payload,
};
use std::collections::HashMap;

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
    },
    SetStatus {
        to: ExecutionStatus,
        message: String,
        error: String,
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
}

impl Command {
    /// What the command is called in error messages.
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
        }
    }
}

/// The event a legal command produces.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
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
    /// The command's arguments make no sense (e.g. status `unspecified`).
    #[error("{0}")]
    InvalidArgument(String),
}

fn illegal(command: &Command, status: ExecutionStatus, hint: &'static str) -> Refusal {
    Refusal::IllegalTransition { command: command.name(), status: status.wire_name(), hint }
}

fn status_of(execution: &Execution) -> ExecutionStatus {
    ExecutionStatus::try_from(execution.status).unwrap_or(ExecutionStatus::Unspecified)
}

/// Decides what `command` does to `current` at time `now`.
pub fn decide(current: Option<&Execution>, command: &Command, now: Timestamp) -> Result<Change, Refusal> {
    let current = match (current, command) {
        (Some(_), Command::Create { .. }) => return Err(Refusal::AlreadyExists),
        (None, Command::Create { tenant_id, execution_id, workflow_id, idempotency_key, labels, input }) => {
            let state = Execution {
                execution_id: execution_id.clone(),
                tenant_id: tenant_id.clone(),
                workflow_id: workflow_id.clone(),
                status: ExecutionStatus::Pending.into(),
                version: 1,
                labels: labels.clone(),
                input: input.clone(),
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
        Command::SetStatus { to, message, error } => {
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
    };
    Ok(Change { event_type, payload, state })
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
        Command::SetStatus { to, message: String::new(), error: String::new() }
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
        };
        let change = decide(None, &create, NOW).expect("creates");
        assert_eq!(change.event_type, EventType::ExecutionCreated);
        assert_eq!((change.state.version, change.state.status), (1, i32::from(ExecutionStatus::Pending)));
        assert_eq!(change.state.created_at, Some(NOW));
        assert_eq!(decide(Some(&change.state), &create, NOW), Err(Refusal::AlreadyExists));
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
            &Command::SetStatus { to: ExecutionStatus::Failed, message: "m".into(), error: "disk full".into() },
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
}
