//! Every metric the api exposes, described and at zero from the first scrape (DESIGN §7: a
//! dashboard or alert must not see a series appear only after the first error).

/// The `command` label of `runcast_api_commands_total`: every [`Command::name`].
pub(crate) const COMMANDS: [&str; 12] = [
    "create",
    "set status",
    "report a step",
    "report progress",
    "cancel",
    "pause",
    "resume",
    "request an approval",
    "resolve an approval",
    "expire an approval",
    "fail for a lost agent",
    "fail for a missed heartbeat",
];

pub(crate) const LISTENERS: [&str; 2] = ["grpc", "rest"];

/// How a command sent again with its `request_id` found its first try: the subject's last event,
/// JetStream's duplicate answer, or a look back through the duplicate window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstTry {
    Last,
    Duplicate,
    LookBack,
}

impl FirstTry {
    const ALL: [Self; 3] = [Self::Last, Self::Duplicate, Self::LookBack];

    fn label(self) -> &'static str {
        match self {
            Self::Last => "last",
            Self::Duplicate => "duplicate",
            Self::LookBack => "look_back",
        }
    }

    /// Counts one retry answered by its first try.
    pub(crate) fn count(self) {
        metrics::counter!("runcast_api_retries_answered_total", "found" => self.label()).increment(1);
    }
}

pub(crate) fn declare() {
    metrics::describe_counter!(
        "runcast_api_commands_total",
        "Commands handled, by command and outcome (ok or the gRPC code name)"
    );
    metrics::describe_histogram!("runcast_api_command_seconds", "Time to decide and append a command");
    metrics::describe_counter!("runcast_api_write_conflicts_total", "Appends that lost a compare-and-set race");
    metrics::describe_counter!("runcast_api_requests_shed_total", "Requests refused at the concurrency limit");
    metrics::describe_counter!(
        "runcast_api_tenant_requests_shed_total",
        "Requests refused because their tenant had its share of the concurrency limit in flight"
    );
    metrics::describe_counter!("runcast_api_requests_timed_out_total", "Requests cut at RUNCAST_REQUEST_TIMEOUT");
    metrics::describe_counter!(
        "runcast_api_retries_answered_total",
        "Commands sent again with their request_id and answered by their first try, by how it was found"
    );
    metrics::describe_counter!(
        "runcast_api_request_ids_reused_total",
        "Commands refused because their request_id was first sent with another change"
    );
    metrics::counter!("runcast_api_request_ids_reused_total").increment(0);
    for found in FirstTry::ALL {
        metrics::counter!("runcast_api_retries_answered_total", "found" => found.label()).increment(0);
    }
    for command in COMMANDS {
        metrics::counter!("runcast_api_commands_total", "command" => command, "outcome" => "ok").increment(0);
        // Registered: rendered with count 0 until the first command.
        let _ = metrics::histogram!("runcast_api_command_seconds", "command" => command);
    }
    metrics::counter!("runcast_api_write_conflicts_total").increment(0);
    for listener in LISTENERS {
        metrics::counter!("runcast_api_requests_shed_total", "listener" => listener).increment(0);
        metrics::counter!("runcast_api_tenant_requests_shed_total", "listener" => listener).increment(0);
        metrics::counter!("runcast_api_requests_timed_out_total", "listener" => listener).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::state_machine::Command;

    /// One command of each kind, to check [`COMMANDS`] names them all.
    fn one_of_each() -> Vec<Command> {
        use runcast_contract::v1::{ExecutionStatus, StepStatus};
        let text = String::new;
        vec![
            Command::Create {
                tenant_id: text(),
                execution_id: text(),
                workflow_id: text(),
                idempotency_key: text(),
                labels: Default::default(),
                input: None,
                heartbeat_timeout_seconds: 0,
            },
            Command::SetStatus { to: ExecutionStatus::Running, message: text(), error: text(), agent_id: text() },
            Command::ReportStep { step_id: text(), name: text(), status: StepStatus::Running, error: text() },
            Command::ReportProgress { percent: 0, current_step: text(), message: text() },
            Command::Cancel { reason: text() },
            Command::Pause { reason: text() },
            Command::Resume { reason: text() },
            Command::RequestApproval { approval_id: text(), reason: text(), deadline: None },
            Command::ResolveApproval { approval_id: text(), granted: true, comment: text(), resolved_by: text() },
            Command::ExpireApproval { approval_id: text() },
            Command::FailForLostAgent { agent_id: text() },
            Command::FailForSilence,
        ]
    }

    #[test]
    fn every_command_is_declared() {
        let names: Vec<&str> = one_of_each().iter().map(Command::name).collect();
        assert_eq!(names, COMMANDS);
    }
}
