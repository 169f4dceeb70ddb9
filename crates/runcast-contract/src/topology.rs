//! Stream names and subjects (DESIGN §2): `exec.{tenant}.{execution_id}` on stream `EXECUTIONS`,
//! `logs.{tenant}.{execution_id}` on `LOGS`, `agents.{tenant}.{agent_id}` on `AGENTS`.
//!
//! A [`Topology`] may carry a prefix. Tests sharing one NATS server give each test its own prefix;
//! it goes on stream names *and* subjects, because two streams may not claim the same subjects.
//! Production runs without a prefix, so the names are exactly those of the design.

use crate::id::{EntityId, InvalidId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Executions,
    Logs,
    Agents,
}

impl StreamKind {
    pub const ALL: [StreamKind; 3] = [Self::Executions, Self::Logs, Self::Agents];

    pub fn base_name(self) -> &'static str {
        match self {
            Self::Executions => "EXECUTIONS",
            Self::Logs => "LOGS",
            Self::Agents => "AGENTS",
        }
    }

    pub fn subject_root(self) -> &'static str {
        match self {
            Self::Executions => "exec",
            Self::Logs => "logs",
            Self::Agents => "agents",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    prefix: Option<EntityId>,
}

impl Topology {
    /// The production topology: the names of the design, no prefix.
    pub fn unprefixed() -> Self {
        Self { prefix: None }
    }

    /// An empty prefix means none.
    pub fn with_prefix(prefix: &str) -> Result<Self, InvalidId> {
        if prefix.is_empty() {
            return Ok(Self::unprefixed());
        }
        Ok(Self { prefix: Some(EntityId::parse("stream prefix", prefix)?) })
    }

    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_ref().map(EntityId::as_str)
    }

    pub fn stream_name(&self, kind: StreamKind) -> String {
        match &self.prefix {
            // Stream names may not contain '.', so the prefix is joined with '_'.
            Some(prefix) => format!("{}_{}", prefix.as_str().to_ascii_uppercase(), kind.base_name()),
            None => kind.base_name().to_owned(),
        }
    }

    fn root(&self, kind: StreamKind) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}.{}", kind.subject_root()),
            None => kind.subject_root().to_owned(),
        }
    }

    /// The subjects a stream captures, e.g. `exec.>`.
    pub fn stream_subjects(&self, kind: StreamKind) -> String {
        format!("{}.>", self.root(kind))
    }

    /// The subject of one entity: `exec.{tenant}.{execution_id}` and so on.
    pub fn entity_subject(&self, kind: StreamKind, tenant: &EntityId, entity: &EntityId) -> String {
        format!("{}.{tenant}.{entity}", self.root(kind))
    }

    /// Every entity of one tenant on a stream: `exec.{tenant}.*`.
    pub fn tenant_subjects(&self, kind: StreamKind, tenant: &EntityId) -> String {
        format!("{}.{tenant}.*", self.root(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(value: &str) -> EntityId {
        EntityId::parse("id", value).expect("valid id")
    }

    #[test]
    fn unprefixed_names_are_the_designed_ones() {
        let topology = Topology::unprefixed();
        let names: Vec<_> =
            StreamKind::ALL.iter().map(|k| (topology.stream_name(*k), topology.stream_subjects(*k))).collect();
        assert_eq!(
            names,
            [
                ("EXECUTIONS".to_owned(), "exec.>".to_owned()),
                ("LOGS".to_owned(), "logs.>".to_owned()),
                ("AGENTS".to_owned(), "agents.>".to_owned())
            ]
        );
        assert_eq!(topology.entity_subject(StreamKind::Executions, &id("acme"), &id("e-1")), "exec.acme.e-1");
        assert_eq!(topology.entity_subject(StreamKind::Logs, &id("acme"), &id("e-1")), "logs.acme.e-1");
        assert_eq!(topology.entity_subject(StreamKind::Agents, &id("acme"), &id("a_9")), "agents.acme.a_9");
        assert_eq!(topology.tenant_subjects(StreamKind::Executions, &id("acme")), "exec.acme.*");
    }

    #[test]
    fn a_prefix_moves_streams_and_subjects_out_of_each_others_way() {
        let topology = Topology::with_prefix("t42").expect("valid prefix");
        assert_eq!(topology.stream_name(StreamKind::Logs), "T42_LOGS");
        assert_eq!(topology.stream_subjects(StreamKind::Executions), "t42.exec.>");
        assert_eq!(topology.entity_subject(StreamKind::Agents, &id("acme"), &id("a")), "t42.agents.acme.a");
        assert_eq!(Topology::with_prefix("").expect("empty is none"), Topology::unprefixed());
    }

    #[test]
    fn a_prefix_that_would_break_subjects_is_refused() {
        for bad in ["a.b", "*", "x y"] {
            assert!(Topology::with_prefix(bad).is_err(), "{bad}");
        }
    }
}
