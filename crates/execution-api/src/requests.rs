//! Turns validated requests into domain commands. Shared by the gRPC and REST front ends, which
//! carry the same request messages (REST bodies are their JSON form).

use crate::commands::WriteOptions;
use crate::domain::state_machine::Command;
use crate::error::ApiError;
use crate::validate::{self, MAX_HEARTBEAT_TIMEOUT_SECONDS, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use runcast_contract::EntityId;
use runcast_contract::v1::*;

pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// A validated write: the execution it changes, the command, and the caller's options.
pub(crate) type Change = (EntityId, Command, WriteOptions);

/// A create request: the execution id to create under, and the command.
pub(crate) fn create(tenant: &EntityId, request: CreateExecutionRequest) -> Result<(EntityId, Command), ApiError> {
    let workflow_id = validate::id("workflow_id", &request.workflow_id)?;
    validate::text("idempotency_key", &request.idempotency_key, MAX_IDEMPOTENCY_KEY_BYTES)?;
    validate::labels(&request.labels)?;
    validate::input(request.input.as_ref())?;
    if request.heartbeat_timeout_seconds > MAX_HEARTBEAT_TIMEOUT_SECONDS {
        return Err(ApiError::invalid(
            "heartbeat_timeout_seconds",
            format!("is {}; at most {MAX_HEARTBEAT_TIMEOUT_SECONDS} (7 days)", request.heartbeat_timeout_seconds),
        ));
    }
    let execution_id = if request.idempotency_key.is_empty() {
        crate::commands::new_execution_id()
    } else {
        crate::commands::execution_id_for_key(tenant, &request.idempotency_key)
    };
    let command = Command::Create {
        tenant_id: tenant.to_string(),
        execution_id: execution_id.to_string(),
        workflow_id: workflow_id.to_string(),
        idempotency_key: request.idempotency_key,
        labels: request.labels,
        input: request.input,
        heartbeat_timeout_seconds: request.heartbeat_timeout_seconds,
    };
    Ok((execution_id, command))
}

/// A change's options when its only one is the caller's `request_id` (empty: none).
fn with_request_id(request_id: &str) -> Result<WriteOptions, ApiError> {
    Ok(WriteOptions { expected_version: None, request_id: validate::optional_id("request_id", request_id)? })
}

pub(crate) fn update_status(request: UpdateExecutionStatusRequest) -> Result<Change, ApiError> {
    let id = validate::id("execution_id", &request.execution_id)?;
    let to = validate::execution_status("status", request.status)?;
    validate::text("message", &request.message, MAX_TEXT_BYTES)?;
    validate::text("error", &request.error, MAX_TEXT_BYTES)?;
    let agent_id = validate::optional_id("agent_id", &request.agent_id)?.map(|id| id.to_string()).unwrap_or_default();
    let options = WriteOptions {
        expected_version: (request.expected_version > 0).then_some(request.expected_version),
        ..with_request_id(&request.request_id)?
    };
    Ok((id, Command::SetStatus { to, message: request.message, error: request.error, agent_id }, options))
}

pub(crate) fn report_step(request: ReportStepRequest) -> Result<Change, ApiError> {
    let id = validate::id("execution_id", &request.execution_id)?;
    let step_id = validate::id("step_id", &request.step_id)?;
    let status = validate::step_status("status", request.status)?;
    validate::text("name", &request.name, MAX_NAME_BYTES)?;
    validate::text("error", &request.error, MAX_TEXT_BYTES)?;
    let options = with_request_id(&request.request_id)?;
    let command =
        Command::ReportStep { step_id: step_id.to_string(), name: request.name, status, error: request.error };
    Ok((id, command, options))
}

pub(crate) fn report_progress(request: ReportProgressRequest) -> Result<Change, ApiError> {
    let id = validate::id("execution_id", &request.execution_id)?;
    let percent = validate::percent(request.percent)?;
    validate::text("current_step", &request.current_step, MAX_NAME_BYTES)?;
    validate::text("message", &request.message, MAX_TEXT_BYTES)?;
    let options = with_request_id(&request.request_id)?;
    Ok((id, Command::ReportProgress { percent, current_step: request.current_step, message: request.message }, options))
}

/// Cancel, pause and resume share their shape: an id, a reason and a request id.
pub(crate) fn with_reason(
    execution_id: &str,
    reason: &str,
    request_id: &str,
) -> Result<(EntityId, String, WriteOptions), ApiError> {
    let id = validate::id("execution_id", execution_id)?;
    validate::text("reason", reason, MAX_TEXT_BYTES)?;
    Ok((id, reason.to_owned(), with_request_id(request_id)?))
}

pub(crate) fn request_approval(request: RequestApprovalRequest) -> Result<Change, ApiError> {
    let id = validate::id("execution_id", &request.execution_id)?;
    let approval_id = validate::id("approval_id", &request.approval_id)?;
    validate::text("reason", &request.reason, MAX_TEXT_BYTES)?;
    if let Some(deadline) = &request.deadline {
        runcast_contract::json::to_datetime(deadline).map_err(|err| ApiError::invalid("deadline", err))?;
    }
    Ok((
        id,
        Command::RequestApproval {
            approval_id: approval_id.to_string(),
            reason: request.reason,
            deadline: request.deadline,
        },
        with_request_id(&request.request_id)?,
    ))
}

pub(crate) fn resolve_approval(request: ResolveApprovalRequest, resolved_by: &str) -> Result<Change, ApiError> {
    let id = validate::id("execution_id", &request.execution_id)?;
    let approval_id = validate::id("approval_id", &request.approval_id)?;
    validate::text("comment", &request.comment, MAX_TEXT_BYTES)?;
    Ok((
        id,
        Command::ResolveApproval {
            approval_id: approval_id.to_string(),
            granted: request.granted,
            comment: request.comment,
            resolved_by: resolved_by.to_owned(),
        },
        with_request_id(&request.request_id)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> EntityId {
        EntityId::parse("tenant_id", "acme").expect("id")
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases: Vec<(Result<(), ApiError>, &str)> = vec![
            (create(&tenant(), CreateExecutionRequest::default()).map(drop), "workflow_id is empty"),
            (
                create(
                    &tenant(),
                    CreateExecutionRequest {
                        workflow_id: "w".into(),
                        idempotency_key: "k".repeat(300),
                        ..Default::default()
                    },
                )
                .map(drop),
                "idempotency_key is 300 bytes",
            ),
            (
                update_status(UpdateExecutionStatusRequest { execution_id: "e".into(), ..Default::default() })
                    .map(drop),
                "status is required",
            ),
            (
                update_status(UpdateExecutionStatusRequest {
                    execution_id: "e".into(),
                    status: 99,
                    ..Default::default()
                })
                .map(drop),
                "status has the unknown value 99",
            ),
            (
                report_progress(ReportProgressRequest { execution_id: "e".into(), percent: 101, ..Default::default() })
                    .map(drop),
                "percent is 101",
            ),
            (
                report_step(ReportStepRequest { execution_id: "e".into(), status: 2, ..Default::default() }).map(drop),
                "step_id is empty",
            ),
            (with_reason("e*", "", "").map(drop), "execution_id contains '*'"),
            (with_reason("e", "", "retry 1").map(drop), "request_id contains ' '"),
            (
                report_progress(ReportProgressRequest {
                    execution_id: "e".into(),
                    request_id: "r".repeat(65),
                    ..Default::default()
                })
                .map(drop),
                "request_id is 65 bytes long",
            ),
            (
                update_status(UpdateExecutionStatusRequest {
                    execution_id: "e".into(),
                    status: 2,
                    agent_id: "agent 7".into(),
                    ..Default::default()
                })
                .map(drop),
                "agent_id contains ' '",
            ),
            (
                create(
                    &tenant(),
                    CreateExecutionRequest {
                        workflow_id: "w".into(),
                        heartbeat_timeout_seconds: MAX_HEARTBEAT_TIMEOUT_SECONDS + 1,
                        ..Default::default()
                    },
                )
                .map(drop),
                "heartbeat_timeout_seconds is 604801",
            ),
            (
                request_approval(RequestApprovalRequest {
                    execution_id: "e".into(),
                    approval_id: "a b".into(),
                    ..Default::default()
                })
                .map(drop),
                "approval_id contains ' '",
            ),
        ];
        for (outcome, expected) in cases {
            let err = outcome.expect_err(expected);
            assert_eq!(err.kind(), crate::error::ApiErrorKind::InvalidArgument);
            assert!(err.to_string().starts_with(expected), "{err} should start with {expected}");
        }
    }

    #[test]
    fn expected_version_zero_means_unconditional_and_an_empty_request_id_none() {
        let (_, _, options) =
            update_status(UpdateExecutionStatusRequest { execution_id: "e".into(), status: 2, ..Default::default() })
                .expect("valid");
        assert_eq!(options, WriteOptions::default());
        let (_, _, options) = update_status(UpdateExecutionStatusRequest {
            execution_id: "e".into(),
            status: 2,
            expected_version: 3,
            request_id: "0193a1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b".into(),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(options.expected_version, Some(3));
        assert_eq!(
            options.request_id.map(|id| id.to_string()).as_deref(),
            Some("0193a1b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b")
        );
    }
}
