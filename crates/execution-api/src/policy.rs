//! Who may call what: the whole authorization table of the api, for gRPC and REST, in one function
//! that the auth layer consults before any handler runs (DESIGN §5).
//!
//! | action | gRPC methods | REST |
//! |---|---|---|
//! | public | health, reflection | `/healthz`, `/readyz`, `/metrics`, `/api/v1/openapi.json` |
//! | read (every role) | Get/List/Watch, ListEvents, ListAgents | `GET` |
//! | submit (submitter, admin) | Create, Cancel, Pause, Resume, ResolveApproval | `POST` executions and their actions |
//! | report (agent, admin) | UpdateExecutionStatus, ReportStep, ReportProgress, AppendLogs, RequestApproval, Heartbeat | — |
//! | administer (admin) | — | `DELETE /api/v1/events` |

use axum::http::Method;
use runcast_runtime::auth::{Access, Action};

pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

pub fn policy(method: &Method, path: &str) -> Access {
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
    } else {
        Action::Submit
    };
    Access::Requires(action)
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
            (Method::DELETE, "/api/v1/events", Access::Requires(Action::Administer)),
        ];
        for (method, path, access) in cases {
            assert_eq!(policy(&method, path), access, "{method} {path}");
        }
    }
}
