//! Channels (DESIGN §4): what a client subscribes to, how a channel maps to a stream and to the
//! subjects replay reads, and which channels one event belongs to. Dispatch and replay both ask
//! [`Routing::channels`], so the live feed and a resume can never disagree about membership.

use runcast_contract::v1::{Event, EventType};
use runcast_contract::{EntityId, StreamKind, Topology};
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
    /// the channel is one entity, every entity of the tenant otherwise (then [`Routing::channels`]
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

/// Where an event belongs: its tenant and entity come from the subject it was stored under (what
/// NATS routed on), the workflow and type from the event itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    pub stream: StreamKind,
    pub tenant: EntityId,
    pub entity: EntityId,
    pub workflow: Option<EntityId>,
    pub event_type: EventType,
}

impl Routing {
    /// Reads `[prefix.]root.{tenant}.{entity}`; `None` for a subject that does not have that
    /// shape (never published by Runcast, so never delivered).
    pub fn from_subject(stream: StreamKind, subject: &str, event: &Event) -> Option<Self> {
        let mut tokens = subject.rsplitn(3, '.');
        let entity = EntityId::parse("entity", tokens.next()?).ok()?;
        let tenant = EntityId::parse("tenant", tokens.next()?).ok()?;
        let root = tokens.next()?;
        if root.rsplit('.').next()? != stream.subject_root() {
            return None;
        }
        let workflow = EntityId::parse("workflow_id", &event.workflow_id).ok();
        let event_type = EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified);
        Some(Self { stream, tenant, entity, workflow, event_type })
    }

    /// Every channel this event is delivered on, at most four.
    pub fn channels(&self) -> Vec<Channel> {
        let mut channels = Vec::with_capacity(4);
        match self.stream {
            StreamKind::Executions => {
                channels.push(Channel::Executions);
                channels.push(Channel::Execution(self.entity.clone()));
                if let Some(workflow) = &self.workflow {
                    channels.push(Channel::Workflow(workflow.clone()));
                }
                if is_approval(self.event_type) {
                    channels.push(Channel::Approvals);
                }
            }
            StreamKind::Logs => channels.push(Channel::Logs(self.entity.clone())),
            StreamKind::Agents => {
                channels.push(Channel::Agents);
                channels.push(Channel::Agent(self.entity.clone()));
            }
        }
        channels
    }

    pub fn belongs_to(&self, channel: &Channel) -> bool {
        self.channels().contains(channel)
    }
}

pub fn is_approval(event_type: EventType) -> bool {
    matches!(
        event_type,
        EventType::ApprovalRequired
            | EventType::ApprovalGranted
            | EventType::ApprovalDenied
            | EventType::ApprovalExpired
    )
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
    fn an_event_belongs_to_its_tenant_wide_entity_workflow_and_approval_channels() {
        let event =
            Event { workflow_id: "wf".into(), r#type: EventType::ApprovalRequired.into(), ..Default::default() };
        let routing = Routing::from_subject(StreamKind::Executions, "t1.exec.acme.e-1", &event).expect("ok");
        assert_eq!(routing.tenant, id("acme"));
        assert_eq!(
            routing.channels(),
            [Channel::Executions, Channel::Execution(id("e-1")), Channel::Workflow(id("wf")), Channel::Approvals]
        );
        let log = Event { r#type: EventType::LogAppended.into(), ..Default::default() };
        let routing = Routing::from_subject(StreamKind::Logs, "logs.acme.e-1", &log).expect("ok");
        assert_eq!(routing.channels(), [Channel::Logs(id("e-1"))]);
        assert!(Routing::from_subject(StreamKind::Logs, "exec.acme.e-1", &log).is_none());
        assert!(Routing::from_subject(StreamKind::Logs, "acme.e-1", &log).is_none());
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
}
