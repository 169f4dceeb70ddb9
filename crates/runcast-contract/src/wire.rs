//! The string form of every contract enum, as it appears in JSON, REST query parameters,
//! WebSocket filters and SSE `event:` lines. Spelled out here rather than derived from the
//! protobuf names because these strings are the public contract (DESIGN §2).

use crate::v1::{AgentStatus, ApprovalStatus, EventType, ExecutionStatus, LogStream, StepStatus};

/// A protobuf enum with a stable lowercase wire name per value.
pub trait WireEnum: Copy + Sized + Into<i32> + TryFrom<i32> + 'static {
    /// What the enum is called in error messages.
    const WHAT: &'static str;
    /// Every value, `Unspecified` first.
    const ALL: &'static [Self];

    fn wire_name(self) -> &'static str;

    fn from_wire_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|value| value.wire_name() == name)
    }

    /// The accepted names, for error messages ("expected one of …").
    fn expected() -> String {
        Self::ALL.iter().skip(1).map(|v| v.wire_name()).collect::<Vec<_>>().join(", ")
    }
}

macro_rules! wire_names {
    ($ty:ident, $what:literal { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl WireEnum for $ty {
            const WHAT: &'static str = $what;
            const ALL: &'static [Self] = &[$($ty::$variant),+];

            fn wire_name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }
    };
}

wire_names!(EventType, "event type" {
    Unspecified => "unspecified",
    ExecutionCreated => "execution.created",
    ExecutionStarted => "execution.started",
    ExecutionProgress => "execution.progress",
    ExecutionPaused => "execution.paused",
    ExecutionResumed => "execution.resumed",
    ExecutionBlocked => "execution.blocked",
    ExecutionCompleted => "execution.completed",
    ExecutionFailed => "execution.failed",
    ExecutionCancelled => "execution.cancelled",
    StepStarted => "step.started",
    StepCompleted => "step.completed",
    StepFailed => "step.failed",
    StepSkipped => "step.skipped",
    ApprovalRequired => "approval.required",
    ApprovalGranted => "approval.granted",
    ApprovalDenied => "approval.denied",
    ApprovalExpired => "approval.expired",
    LogAppended => "log.appended",
    AgentOnline => "agent.online",
    AgentHeartbeat => "agent.heartbeat",
    AgentOffline => "agent.offline",
});

wire_names!(ExecutionStatus, "execution status" {
    Unspecified => "unspecified",
    Pending => "pending",
    Running => "running",
    Paused => "paused",
    Blocked => "blocked",
    Completed => "completed",
    Failed => "failed",
    Cancelled => "cancelled",
});

wire_names!(StepStatus, "step status" {
    Unspecified => "unspecified",
    Pending => "pending",
    Running => "running",
    Completed => "completed",
    Failed => "failed",
    Skipped => "skipped",
});

wire_names!(ApprovalStatus, "approval status" {
    Unspecified => "unspecified",
    Pending => "pending",
    Granted => "granted",
    Denied => "denied",
    Expired => "expired",
});

wire_names!(AgentStatus, "agent status" {
    Unspecified => "unspecified",
    Online => "online",
    Busy => "busy",
    Draining => "draining",
    Offline => "offline",
});

wire_names!(LogStream, "log stream" {
    Unspecified => "unspecified",
    Stdout => "stdout",
    Stderr => "stderr",
});

impl ExecutionStatus {
    /// `completed`, `failed` and `cancelled` never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

impl EventType {
    /// Which stream an event of this type lives on.
    pub fn stream(self) -> crate::StreamKind {
        use crate::StreamKind;
        match self {
            Self::LogAppended => StreamKind::Logs,
            Self::AgentOnline | Self::AgentHeartbeat | Self::AgentOffline => StreamKind::Agents,
            _ => StreamKind::Executions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list in DESIGN §2, verbatim.
    const DESIGN_EVENT_TYPES: &[&str] = &[
        "execution.created",
        "execution.started",
        "execution.progress",
        "execution.paused",
        "execution.resumed",
        "execution.blocked",
        "execution.completed",
        "execution.failed",
        "execution.cancelled",
        "step.started",
        "step.completed",
        "step.failed",
        "step.skipped",
        "approval.required",
        "approval.granted",
        "approval.denied",
        "approval.expired",
        "log.appended",
        "agent.online",
        "agent.heartbeat",
        "agent.offline",
    ];

    #[test]
    fn event_types_are_exactly_the_designed_ones() {
        let names: Vec<_> = EventType::ALL.iter().skip(1).map(|t| t.wire_name()).collect();
        assert_eq!(names, DESIGN_EVENT_TYPES);
    }

    #[test]
    fn every_protobuf_value_has_a_wire_name_that_round_trips() {
        fn check<E: WireEnum + std::fmt::Debug + PartialEq>() {
            let mut seen = std::collections::HashSet::new();
            for raw in 0..64 {
                if let Ok(value) = E::try_from(raw) {
                    let name = value.wire_name();
                    assert!(seen.insert(name), "{name} used twice");
                    assert_eq!(E::from_wire_name(name), Some(value));
                }
            }
            assert_eq!(seen.len(), E::ALL.len(), "ALL of {} misses a value", E::WHAT);
        }
        check::<EventType>();
        check::<ExecutionStatus>();
        check::<StepStatus>();
        check::<ApprovalStatus>();
        check::<AgentStatus>();
        check::<LogStream>();
    }

    #[test]
    fn unknown_names_are_refused() {
        assert_eq!(ExecutionStatus::from_wire_name("RUNNING"), None);
        assert_eq!(EventType::from_wire_name("execution_started"), None);
        assert_eq!(EventType::from_wire_name(""), None);
    }

    #[test]
    fn terminal_statuses() {
        let terminal: Vec<_> = ExecutionStatus::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.wire_name()).collect();
        assert_eq!(terminal, ["completed", "failed", "cancelled"]);
    }

    #[test]
    fn event_types_map_to_their_streams() {
        use crate::StreamKind;
        assert_eq!(EventType::LogAppended.stream(), StreamKind::Logs);
        assert_eq!(EventType::AgentHeartbeat.stream(), StreamKind::Agents);
        assert_eq!(EventType::ApprovalExpired.stream(), StreamKind::Executions);
    }
}
