//! Channels (DESIGN §4): what a client subscribes to and the stream whose offsets it speaks. The
//! gateway routes events to them (`ws-gateway`'s `channel::Routing`).

use crate::{EntityId, StreamKind, Topology};
use std::fmt;

/// A channel, always scoped to the subscriber's tenant (the tenant is not part of its name).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// `executions`: every execution event of the tenant.
    Executions,
    /// `executions:{id}`: one execution.
    Execution(EntityId),
    /// `workflows:{id}`: every execution of one workflow.
    Workflow(EntityId),
    /// `approvals`: the `approval.*` events of the tenant.
    Approvals,
    /// `logs:{execution_id}`: the log lines of one execution.
    Logs(EntityId),
    /// `agents`: every agent event of the tenant.
    Agents,
    /// `agents:{id}`: one agent.
    Agent(EntityId),
}

/// Why a channel name was refused; the message names the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidChannel(pub String);

const ACCEPTED: &str = "expected one of executions, executions:{id}, workflows:{id}, approvals, \
                        logs:{execution_id}, agents, agents:{id}";

impl Channel {
    pub fn parse(name: &str) -> Result<Self, InvalidChannel> {
        let (kind, id) = match name.split_once(':') {
            Some((kind, id)) => (kind, Some(id)),
            None => (name, None),
        };
        let id_of = |field: &'static str| -> Result<EntityId, InvalidChannel> {
            let id = id.unwrap_or_default();
            EntityId::parse(field, id)
                .map_err(|err| InvalidChannel(format!("channel '{}': {err}", name.escape_debug())))
        };
        match (kind, id) {
            ("executions", None) => Ok(Self::Executions),
            ("executions", Some(_)) => Ok(Self::Execution(id_of("execution_id")?)),
            ("workflows", Some(_)) => Ok(Self::Workflow(id_of("workflow_id")?)),
            ("approvals", None) => Ok(Self::Approvals),
            ("logs", Some(_)) => Ok(Self::Logs(id_of("execution_id")?)),
            ("agents", None) => Ok(Self::Agents),
            ("agents", Some(_)) => Ok(Self::Agent(id_of("agent_id")?)),
            _ => Err(InvalidChannel(format!("unknown channel '{}': {ACCEPTED}", name.escape_debug()))),
        }
    }

    /// The stream whose offsets this channel's `since_offset` and `offset` speak.
    pub fn stream(&self) -> StreamKind {
        match self {
            Self::Executions | Self::Execution(_) | Self::Workflow(_) | Self::Approvals => StreamKind::Executions,
            Self::Logs(_) => StreamKind::Logs,
            Self::Agents | Self::Agent(_) => StreamKind::Agents,
        }
    }

    /// The name without its id, for stats and metrics labels (bounded cardinality).
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Executions => "executions",
            Self::Execution(_) => "execution",
            Self::Workflow(_) => "workflow",
            Self::Approvals => "approvals",
            Self::Logs(_) => "logs",
            Self::Agents => "agents",
            Self::Agent(_) => "agent",
        }
    }

    /// The subject filter that reads this channel back from its stream: one entity's subject when
    /// the channel is one entity, every entity of the tenant otherwise (then the gateway's routing
    /// narrows it down).
    pub fn replay_subject(&self, topology: &Topology, tenant: &EntityId) -> String {
        match self {
            Self::Execution(id) | Self::Logs(id) | Self::Agent(id) => {
                topology.entity_subject(self.stream(), tenant, id)
            }
            _ => topology.tenant_subjects(self.stream(), tenant),
        }
    }

    /// The entity whose current state `snapshot: true` sends, if the channel has one.
    pub fn snapshot_entity(&self) -> Option<&EntityId> {
        match self {
            Self::Execution(id) | Self::Agent(id) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Executions => f.write_str("executions"),
            Self::Execution(id) => write!(f, "executions:{id}"),
            Self::Workflow(id) => write!(f, "workflows:{id}"),
            Self::Approvals => f.write_str("approvals"),
            Self::Logs(id) => write!(f, "logs:{id}"),
            Self::Agents => f.write_str("agents"),
            Self::Agent(id) => write!(f, "agents:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &str) -> EntityId {
        EntityId::parse("id", value).expect("valid id")
    }

    #[test]
    fn every_designed_channel_parses_and_prints_back() {
        for name in ["executions", "executions:e-1", "workflows:wf_9", "approvals", "logs:e-1", "agents", "agents:a1"] {
            let channel = Channel::parse(name).expect(name);
            assert_eq!(channel.to_string(), name);
        }
        assert_eq!(Channel::parse("logs:e-1").expect("logs").stream(), StreamKind::Logs);
        assert_eq!(Channel::parse("approvals").expect("approvals").stream(), StreamKind::Executions);
    }

    #[test]
    fn malformed_channels_are_refused_with_a_reason() {
        for (name, reason) in [
            ("execution", "unknown channel"),
            ("logs", "unknown channel"),
            ("approvals:x", "unknown channel"),
            ("executions:", "is empty"),
            ("executions:a.b", "contains '.'"),
            ("agents:*", "contains '*'"),
            ("", "unknown channel"),
        ] {
            let err = Channel::parse(name).expect_err(name);
            assert!(err.0.contains(reason), "{name}: {err}");
        }
    }

    #[test]
    fn replay_subjects_are_as_narrow_as_the_channel() {
        let topology = Topology::with_prefix("p").expect("prefix");
        let tenant = id("acme");
        let subject = |name: &str| Channel::parse(name).expect(name).replay_subject(&topology, &tenant);
        assert_eq!(subject("executions:e1"), "p.exec.acme.e1");
        assert_eq!(subject("workflows:w"), "p.exec.acme.*");
        assert_eq!(subject("logs:e1"), "p.logs.acme.e1");
        assert_eq!(subject("agents"), "p.agents.acme.*");
    }

    #[test]
    fn ids_print_inside_the_channel() {
        assert_eq!(Channel::Agent(id("a1")).to_string(), "agents:a1");
    }
}
