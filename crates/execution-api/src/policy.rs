//! Who may call what: the whole authorization table of the api, for gRPC and REST, in one function
//! that the auth layer consults before any handler runs (DESIGN §5).
//!
//! | action | gRPC methods | REST |
//! |---|---|---|
//! | public | health, reflection | `/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json` |
//! | read (every role) | Get/List/Watch, ListEvents, ListAgents | `GET` |
//! | submit (submitter, admin) | Create, Cancel, Pause, Resume, ResolveApproval | `POST` executions and their actions |
//! | report (agent, admin) | UpdateExecutionStatus, ReportStep, ReportProgress, AppendLogs, RequestApproval, Heartbeat | `POST /api/v1/executions/{id}/status\|steps\|progress\|logs\|approvals`, `POST /api/v1/agents/{id}/heartbeat` |
//! | administer (admin) | — | `DELETE /api/v1/events` |

use axum::http::Method;
use runcast_runtime::auth::{Access, Action};

pub(crate) const OPENAPI_PATH: &str = "/api/v1/openapi.json";

pub(crate) fn policy(method: &Method, path: &str) -> Access {
    if path.starts_with("/grpc.health.v1.")
        || path.starts_with("/grpc.reflection.")
        || matches!(path, "/healthz" | "/readyz" | "/metrics" | OPENAPI_PATH)
    {
        return Access::Public;
    }
    let action = if let Some(rpc) = path.strip_prefix("/runcast.v1.ExecutionService/") {
        match rpc {
            "CreateExecution" | "CancelExecution" | "PauseExecution" | "ResumeExecution" | "ResolveApproval" => {
                Action::Submit
            }
            "UpdateExecutionStatus" | "ReportStep" | "ReportProgress" | "AppendLogs" | "RequestApproval" => {
                Action::Report
            }
            _ => Action::Read,
        }
    } else if let Some(rpc) = path.strip_prefix("/runcast.v1.AgentService/") {
        if rpc == "Heartbeat" { Action::Report } else { Action::Read }
    } else if *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS {
        Action::Read
    } else if *method == Method::DELETE && path.starts_with("/api/v1/events") {
        Action::Administer
    } else if *method == Method::POST && is_worker_route(path) {
        Action::Report
    } else {
        Action::Submit
    };
    Access::Requires(action)
}

/// The REST mirror of what agents report: `/executions/{id}/{status,steps,progress,logs,approvals}`
/// (requesting an approval; resolving one, `/approvals/{approval_id}`, is a submitter's) and
/// `/agents/{id}/heartbeat`.
fn is_worker_route(path: &str) -> bool {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        segments.as_slice(),
        ["", "api", "v1", "executions", _, "status" | "steps" | "progress" | "logs" | "approvals"]
            | ["", "api", "v1", "agents", _, "heartbeat"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        let cases = [
            (Method::POST, "/grpc.health.v1.Health/Check", Access::Public),
            (Method::GET, "/api/v1/openapi.json", Access::Public),
            (Method::POST, "/runcast.v1.ExecutionService/CreateExecution", Access::Requires(Action::Submit)),
            (Method::POST, "/runcast.v1.ExecutionService/ResolveApproval", Access::Requires(Action::Submit)),
            (Method::POST, "/runcast.v1.ExecutionService/ReportProgress", Access::Requires(Action::Report)),
            (Method::POST, "/runcast.v1.ExecutionService/AppendLogs", Access::Requires(Action::Report)),
            (Method::POST, "/runcast.v1.ExecutionService/WatchExecution", Access::Requires(Action::Read)),
            (Method::POST, "/runcast.v1.AgentService/Heartbeat", Access::Requires(Action::Report)),
            (Method::POST, "/runcast.v1.AgentService/ListAgents", Access::Requires(Action::Read)),
            (Method::GET, "/api/v1/executions", Access::Requires(Action::Read)),
            (Method::POST, "/api/v1/executions", Access::Requires(Action::Submit)),
            (Method::POST, "/api/v1/executions/e1/cancel", Access::Requires(Action::Submit)),
            (Method::POST, "/api/v1/executions/e1/status", Access::Requires(Action::Report)),
            (Method::POST, "/api/v1/executions/e1/steps", Access::Requires(Action::Report)),
            (Method::POST, "/api/v1/executions/e1/progress", Access::Requires(Action::Report)),
            (Method::POST, "/api/v1/executions/e1/logs", Access::Requires(Action::Report)),
            (Method::POST, "/api/v1/executions/e1/approvals", Access::Requires(Action::Report)),
            (Method::POST, "/api/v1/executions/e1/approvals/a1", Access::Requires(Action::Submit)),
            (Method::POST, "/api/v1/agents/a1/heartbeat", Access::Requires(Action::Report)),
            (Method::POST, "/api/v1/executions/status", Access::Requires(Action::Submit)),
            (Method::DELETE, "/api/v1/events", Access::Requires(Action::Administer)),
        ];
        for (method, path, access) in cases {
            assert_eq!(policy(&method, path), access, "{method} {path}");
        }
    }
}
