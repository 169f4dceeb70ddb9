//! The event log: everything Runcast recorded on a stream, readable after any offset.
//!
//! The newest part is the JetStream stream; the part the stream has aged out is the PostgreSQL
//! history the persister keeps at the same offsets (`events.stream_offset`). Readers — the
//! gateway's resume and snapshots, the api's `WatchExecution` — go through [`EventLog`] and
//! [`read_after`], which decide where an offset is still held. [`JetStreamLog`] is the real log;
//! [`MemoryLog`] keeps everything in memory so those readers can be unit-tested, with retention,
//! a history outage and a new stream epoch at the test's command.

mod jetstream;
mod memory;
mod read;

pub use jetstream::{JetStreamLog, epoch};
pub use memory::MemoryLog;
pub use read::{Plan, ReadError, plan, read_after};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use runcast_contract::v1::event::State;
use runcast_contract::{EntityId, StreamKind};
use runcast_runtime::Error;

/// One recorded event, as stored: the subject it was published on, its offset (the stream
/// sequence) and its protobuf bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub subject: String,
    pub offset: u64,
    pub payload: Bytes,
}

/// What a stream holds right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    /// The oldest offset the stream still holds (older ones are only in the history).
    pub first: u64,
    /// The newest offset (0: nothing yet).
    pub last: u64,
    /// The stream's incarnation (its creation time, RFC 3339): offsets of another epoch are not
    /// positions of this stream.
    pub epoch: String,
}

/// The events one reader wants: a subject filter for the stream and the same scope for the
/// history, which stores events without their subject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// A NATS subject filter (`*` and `>` wildcards).
    pub subject: String,
    pub execution_id: Option<String>,
    pub agent_id: Option<String>,
    pub workflow_id: Option<String>,
}

impl Scope {
    fn history_filter(&self) -> runcast_store::history::EntityFilter<'_> {
        runcast_store::history::EntityFilter {
            execution_id: self.execution_id.as_deref(),
            agent_id: self.agent_id.as_deref(),
            workflow_id: self.workflow_id.as_deref(),
        }
    }
}

/// A stream of recorded events and the history behind it. Errors are `Unavailable` when a source
/// cannot answer now (retry later), `Internal` otherwise.
pub trait EventLog: Send + Sync {
    /// The stream's current bounds and epoch.
    fn bounds(&self, kind: StreamKind) -> BoxFuture<'_, Result<Bounds, Error>>;

    /// The last event on `subject` the stream holds, if any.
    fn last<'a>(&'a self, kind: StreamKind, subject: &'a str) -> BoxFuture<'a, Result<Option<Logged>, Error>>;

    /// The read model's state of an entity the stream may no longer hold (its `offset` is the
    /// last event applied).
    fn archived<'a>(
        &'a self,
        kind: StreamKind,
        tenant: &'a EntityId,
        entity: &'a EntityId,
    ) -> BoxFuture<'a, Result<Option<State>, Error>>;

    /// Whether the history goes back to `since + 1`.
    fn history_reaches(&self, kind: StreamKind, since: u64) -> BoxFuture<'_, Result<bool, Error>>;

    /// Up to `limit` history events of `tenant` in `scope` with `after < offset < before`, in
    /// offset order.
    fn history_page<'a>(
        &'a self,
        kind: StreamKind,
        tenant: &'a EntityId,
        scope: &'a Scope,
        after: u64,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Logged>, Error>>;

    /// The stream's events in `scope` from offset `start` up to `last`, in order, read `batch`
    /// at a time.
    fn stream_from<'a>(
        &'a self,
        kind: StreamKind,
        scope: &'a Scope,
        start: u64,
        last: u64,
        batch: usize,
    ) -> BoxStream<'a, Result<Logged, Error>>;
}

/// Whether two epochs name the same instant (a client may echo it in another RFC 3339 spelling).
pub fn same_epoch(a: &str, b: &str) -> bool {
    match (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_compare_as_instants_whatever_the_spelling() {
        assert!(same_epoch("2026-12-01T21:00:00.500000000Z", "2026-12-01T21:00:00.5Z"));
        assert!(same_epoch("2026-12-01T21:00:00.5Z", "2026-12-01T22:00:00.5+01:00"));
        assert!(!same_epoch("2026-12-01T21:00:00.5Z", "2026-12-01T21:00:00.500000001Z"));
        assert!(!same_epoch("", "2026-12-01T21:00:00Z"));
    }
}
