//! Reads from the PostgreSQL read model the event-persister maintains (through `runcast_store`):
//! lists of executions, agents and the event history, with keyset pagination (an opaque cursor
//! holding the sort key of the last row, stable under concurrent inserts) and `as_of_offset`, the
//! low watermark of the stream the read model reflects. Here: the request's fields checked and the
//! store's errors answered. PostgreSQL being down makes these `UNAVAILABLE`; writes do not depend
//! on it.

use crate::error::ApiError;
use chrono::{DateTime, Utc};
use runcast_contract::v1::{Agent, AgentStatus, Event, EventType, Execution, ExecutionStatus, event};
use runcast_contract::{EntityId, StreamKind};
use runcast_store::history::EventQuery;
use runcast_store::read_model::ExecutionQuery;
use runcast_store::{Cursor, InvalidCursor, PgPool};

pub use runcast_store::Page;

#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub workflow_id: Option<EntityId>,
    pub statuses: Vec<ExecutionStatus>,
    pub page_size: u32,
    pub cursor: String,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub execution_id: Option<EntityId>,
    pub workflow_id: Option<EntityId>,
    pub types: Vec<EventType>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub page_size: u32,
    pub cursor: String,
}

#[cfg(test)]
fn encode_cursor(at: DateTime<Utc>, id: &str) -> String {
    Cursor::new(at, id).encode()
}

fn invalid_cursor(field: &str, err: InvalidCursor) -> ApiError {
    match err {
        InvalidCursor::Malformed => {
            ApiError::invalid(field, "is not a cursor returned by this api: pass the next_cursor of the previous page")
        }
        InvalidCursor::NotAnEventCursor => {
            ApiError::invalid(field, "is not a cursor of the event history: pass the next_cursor of the previous page")
        }
    }
}

fn decode_cursor(field: &str, token: &str) -> Result<Option<Cursor>, ApiError> {
    Cursor::decode(token).map_err(|err| invalid_cursor(field, err))
}

/// A history cursor: rows are keyed by (time, event id), so a cursor with another kind of id was
/// not ours.
fn event_cursor(token: &str) -> Result<Option<(DateTime<Utc>, uuid::Uuid)>, ApiError> {
    Cursor::decode_event(token).map_err(|err| invalid_cursor("page_token", err))
}

fn db_error(err: runcast_store::Error) -> ApiError {
    match err.kind() {
        runcast_store::ErrorKind::Unavailable => ApiError::unavailable(format!(
            "{err} (PostgreSQL is unreachable: lists and history come back with it; writes keep working)"
        )),
        _ => ApiError::internal(err.to_string()),
    }
}

#[derive(Clone, Debug)]
pub struct Queries {
    pool: PgPool,
}

impl Queries {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Deletes the tenant's history that occurred before `cutoff`, and nothing of other tenants
    /// (dropping whole day partitions is the persister's retention loop alone).
    pub async fn delete_events_older_than(&self, tenant: &EntityId, cutoff: DateTime<Utc>) -> Result<u64, ApiError> {
        runcast_store::retention::delete_tenant_events_older_than(&self.pool, tenant, cutoff).await.map_err(db_error)
    }

    /// Every event of `stream` at or below this offset is reflected in the read model. Read before
    /// the rows, so the rows are at least that fresh.
    pub async fn as_of_offset(&self, stream: StreamKind) -> Result<u64, ApiError> {
        runcast_store::read_model::as_of_offset(&self.pool, stream).await.map_err(db_error)
    }

    pub async fn list_executions(
        &self,
        tenant: &EntityId,
        filter: &ExecutionFilter,
    ) -> Result<Page<Execution>, ApiError> {
        let after = decode_cursor("page_token", &filter.cursor)?;
        let query = ExecutionQuery {
            workflow_id: filter.workflow_id.as_ref(),
            statuses: &filter.statuses,
            page_size: filter.page_size,
            after: after.as_ref(),
        };
        runcast_store::read_model::list_executions(&self.pool, tenant, &query).await.map_err(db_error)
    }

    /// History pages. `as_of_offset` is the EXECUTIONS stream's watermark: every execution event
    /// at or below it is in the history.
    pub async fn list_events(&self, tenant: &EntityId, filter: &EventFilter) -> Result<Page<Event>, ApiError> {
        let query = EventQuery {
            execution_id: filter.execution_id.as_ref(),
            workflow_id: filter.workflow_id.as_ref(),
            types: &filter.types,
            since: filter.since,
            until: filter.until,
            page_size: filter.page_size,
            after: event_cursor(&filter.cursor)?,
        };
        runcast_store::history::list_events(&self.pool, tenant, &query).await.map_err(db_error)
    }

    pub async fn list_agents(
        &self,
        tenant: &EntityId,
        statuses: &[AgentStatus],
        page_size: u32,
        cursor: &str,
    ) -> Result<Page<Agent>, ApiError> {
        let after = decode_cursor("page_token", cursor)?;
        runcast_store::read_model::list_agents(&self.pool, tenant, statuses, page_size, after.as_ref())
            .await
            .map_err(db_error)
    }
}

/// The execution an event belongs to, when it carries one.
pub fn execution_state(event: &Event) -> Option<&Execution> {
    match event.state.as_ref() {
        Some(event::State::Execution(execution)) => Some(execution),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever a client sends as a cursor, the answer is a page position or a 400 naming
        /// the field: never a panic.
        #[test]
        fn any_cursor_decodes_or_is_refused_naming_the_field(token in ".{0,200}", bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            // Raw text, hex of anything, and well-formed cursors with any id.
            let shaped = hex::encode(serde_json::json!({"at": "2026-01-01T00:00:00Z", "id": token.clone()}).to_string());
            for candidate in [token, hex::encode(&bytes), shaped] {
                for outcome in [decode_cursor("page_token", &candidate).map(drop), event_cursor(&candidate).map(drop)] {
                    if let Err(err) = outcome {
                        proptest::prop_assert_eq!(err.kind(), crate::error::ApiErrorKind::InvalidArgument);
                        proptest::prop_assert!(err.to_string().starts_with("page_token"));
                    }
                }
            }
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused_with_the_field_named() {
        let at = DateTime::<Utc>::from_timestamp(1_790_000_000, 123_456_000).expect("time");
        let token = encode_cursor(at, "e-1");
        assert_eq!(decode_cursor("page_token", &token).expect("decodes"), Some(Cursor { at, id: "e-1".into() }));
        assert_eq!(decode_cursor("page_token", "").expect("empty"), None);
        let err = decode_cursor("page_token", "zz").expect_err("garbage");
        assert!(err.to_string().starts_with("page_token is not a cursor"), "{err}");
    }
}
