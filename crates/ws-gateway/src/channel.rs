//! Which channels one event belongs to. The channels themselves (names, streams, replay
//! subjects) are the contract's ([`runcast_contract::gateway::Channel`]); dispatch and replay both
//! ask [`Routing::channels`], so the live feed and a resume can never disagree about membership.

pub use runcast_contract::gateway::{Channel, InvalidChannel};
use runcast_contract::v1::{Event, EventType};
use runcast_contract::{EntityId, StreamKind};

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
}
