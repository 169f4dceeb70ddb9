//! An event log in memory, for unit tests of its readers: append events, then age them out of
//! the "stream", cut the "history", take it down or start a new epoch, and read as the real log
//! would answer.

use crate::{Bounds, EventLog, Logged, Scope};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use prost::Message as _;
use runcast_contract::v1::Event;
use runcast_contract::v1::event::State;
use runcast_contract::{EntityId, StreamKind, Topology};
use runcast_runtime::{Error, ErrorKind};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

struct Recorded {
    /// Every event ever appended; offset = index + 1.
    events: Vec<(Logged, Event)>,
    /// The oldest offset the stream holds.
    first: u64,
    /// The oldest offset the history holds.
    history_from: u64,
    epoch: String,
}

impl Default for Recorded {
    fn default() -> Self {
        Self { events: Vec::new(), first: 1, history_from: 1, epoch: "2026-12-01T00:00:00Z".into() }
    }
}

#[derive(Default)]
struct Logs {
    streams: HashMap<StreamKind, Recorded>,
    history_down: bool,
    archived: HashMap<(StreamKind, String, String), State>,
}

/// See the module documentation. Subjects are the topology's, as the real log's.
pub struct MemoryLog {
    topology: Topology,
    logs: Mutex<Logs>,
}

fn history_unavailable() -> Error {
    Error::new(ErrorKind::Unavailable, "the history (PostgreSQL) is down")
}

/// Whether a NATS subject filter (`*`: one token, `>`: the rest) matches `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in filter.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

fn in_scope(scope: &Scope, event: &Event) -> bool {
    let matches = |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|wanted| wanted == value);
    matches(&scope.execution_id, &event.execution_id)
        && matches(&scope.agent_id, &event.agent_id)
        && matches(&scope.workflow_id, &event.workflow_id)
}

impl MemoryLog {
    pub fn new(topology: Topology) -> Self {
        Self { topology, logs: Mutex::default() }
    }

    fn logs(&self) -> MutexGuard<'_, Logs> {
        self.logs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `event` on its entity's subject (agents: `agent_id`, else `execution_id`) and
    /// returns it as stored, `offset` set.
    pub fn append(&self, kind: StreamKind, event: &Event) -> Logged {
        let tenant = EntityId::parse("tenant_id", &event.tenant_id).expect("a test event has a valid tenant");
        let entity = match kind {
            StreamKind::Agents => &event.agent_id,
            _ => &event.execution_id,
        };
        let entity = EntityId::parse("entity", entity).expect("a test event has a valid entity id");
        let subject = self.topology.entity_subject(kind, &tenant, &entity);
        let mut logs = self.logs();
        let recorded = logs.streams.entry(kind).or_default();
        let offset = recorded.events.len() as u64 + 1;
        let logged = Logged { subject, offset, payload: event.encode_to_vec().into() };
        recorded.events.push((logged.clone(), event.clone()));
        logged
    }

    /// The stream drops every offset before `first` (they stay in the history).
    pub fn age_out(&self, kind: StreamKind, first: u64) {
        self.logs().streams.entry(kind).or_default().first = first;
    }

    /// The history drops every offset before `first` (retention).
    pub fn drop_history_before(&self, kind: StreamKind, first: u64) {
        self.logs().streams.entry(kind).or_default().history_from = first;
    }

    /// PostgreSQL goes down (`false`) or comes back.
    pub fn set_history_available(&self, available: bool) {
        self.logs().history_down = !available;
    }

    /// The stream was recreated: positions of the old epoch are not its positions.
    pub fn set_epoch(&self, kind: StreamKind, epoch: &str) {
        epoch.clone_into(&mut self.logs().streams.entry(kind).or_default().epoch);
    }

    /// The read model's row for an entity.
    pub fn archive(&self, kind: StreamKind, tenant: &str, entity: &str, state: State) {
        self.logs().archived.insert((kind, tenant.to_owned(), entity.to_owned()), state);
    }

    /// The events the stream holds in `[start, last]` in scope.
    fn stream_events(&self, kind: StreamKind, scope: &Scope, start: u64, last: u64) -> Vec<Logged> {
        let logs = self.logs();
        let Some(recorded) = logs.streams.get(&kind) else { return Vec::new() };
        recorded
            .events
            .iter()
            .map(|(logged, _)| logged)
            .filter(|logged| logged.offset >= start.max(recorded.first) && logged.offset <= last)
            .filter(|logged| subject_matches(&scope.subject, &logged.subject))
            .cloned()
            .collect()
    }
}

impl EventLog for MemoryLog {
    fn bounds(&self, kind: StreamKind) -> BoxFuture<'_, Result<Bounds, Error>> {
        let logs = self.logs();
        let bounds = match logs.streams.get(&kind) {
            Some(recorded) => {
                Bounds { first: recorded.first, last: recorded.events.len() as u64, epoch: recorded.epoch.clone() }
            }
            None => {
                let fresh = Recorded::default();
                Bounds { first: fresh.first, last: 0, epoch: fresh.epoch }
            }
        };
        Box::pin(async move { Ok(bounds) })
    }

    fn last<'a>(&'a self, kind: StreamKind, subject: &'a str) -> BoxFuture<'a, Result<Option<Logged>, Error>> {
        let logs = self.logs();
        let found = logs.streams.get(&kind).and_then(|recorded| {
            recorded
                .events
                .iter()
                .rev()
                .map(|(logged, _)| logged)
                .take_while(|logged| logged.offset >= recorded.first)
                .find(|logged| logged.subject == subject)
                .cloned()
        });
        Box::pin(async move { Ok(found) })
    }

    fn archived<'a>(
        &'a self,
        kind: StreamKind,
        tenant: &'a EntityId,
        entity: &'a EntityId,
    ) -> BoxFuture<'a, Result<Option<State>, Error>> {
        let logs = self.logs();
        let found = if logs.history_down {
            Err(history_unavailable())
        } else {
            Ok(logs.archived.get(&(kind, tenant.to_string(), entity.to_string())).cloned())
        };
        Box::pin(async move { found })
    }

    fn history_reaches(&self, kind: StreamKind, since: u64) -> BoxFuture<'_, Result<bool, Error>> {
        let logs = self.logs();
        let reaches = if logs.history_down {
            Err(history_unavailable())
        } else {
            let history_from = logs.streams.get(&kind).map_or(1, |recorded| recorded.history_from);
            Ok(history_from <= since.saturating_add(1))
        };
        Box::pin(async move { reaches })
    }

    fn history_page<'a>(
        &'a self,
        kind: StreamKind,
        tenant: &'a EntityId,
        scope: &'a Scope,
        after: u64,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Logged>, Error>> {
        let logs = self.logs();
        let page = if logs.history_down {
            Err(history_unavailable())
        } else {
            Ok(logs.streams.get(&kind).map_or_else(Vec::new, |recorded| {
                recorded
                    .events
                    .iter()
                    .filter(|(logged, _)| logged.offset > after.max(recorded.history_from.saturating_sub(1)))
                    .filter(|(logged, _)| logged.offset < before)
                    .filter(|(_, event)| event.tenant_id == tenant.as_str() && in_scope(scope, event))
                    .take(limit)
                    .map(|(logged, _)| logged.clone())
                    .collect()
            }))
        };
        Box::pin(async move { page })
    }

    fn stream_from<'a>(
        &'a self,
        kind: StreamKind,
        scope: &'a Scope,
        start: u64,
        last: u64,
        _batch: usize,
    ) -> BoxStream<'a, Result<Logged, Error>> {
        Box::pin(futures::stream::iter(self.stream_events(kind, scope, start, last).into_iter().map(Ok)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_filters_match_like_nats() {
        assert!(subject_matches("p.exec.acme.e1", "p.exec.acme.e1"));
        assert!(subject_matches("p.exec.acme.*", "p.exec.acme.e1"));
        assert!(!subject_matches("p.exec.acme.*", "p.exec.other.e1"));
        assert!(!subject_matches("p.exec.acme.*", "p.exec.acme.e1.more"));
        assert!(subject_matches("p.exec.>", "p.exec.acme.e1"));
        assert!(!subject_matches("p.exec.acme.e1", "p.exec.acme"));
    }
}
