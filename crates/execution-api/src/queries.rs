//! Reads from the PostgreSQL read model the event-persister maintains: lists of executions, agents
//! and the event history, with keyset pagination (an opaque cursor holding the sort key of the last
//! row, stable under concurrent inserts) and `as_of_offset`, the low watermark of the stream the
//! read model reflects. PostgreSQL being down makes these `UNAVAILABLE`; writes do not depend on it.

use crate::error::ApiError;
use chrono::{DateTime, Utc};
use prost::Message as _;
use runcast_contract::v1::{Agent, AgentStatus, Event, EventType, Execution, ExecutionStatus, event};
use runcast_contract::{EntityId, StreamKind, WireEnum};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Empty on the last page.
    pub next_cursor: String,
    pub as_of_offset: u64,
}

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

/// Sort key of the last row of a page. Serialized as hex JSON: opaque to clients, checkable here.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cursor {
    at: DateTime<Utc>,
    id: String,
}

fn encode_cursor(at: DateTime<Utc>, id: &str) -> String {
    hex::encode(serde_json::to_vec(&Cursor { at, id: id.to_owned() }).unwrap_or_default())
}

fn decode_cursor(field: &str, token: &str) -> Result<Option<Cursor>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    hex::decode(token).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).map(Some).ok_or_else(|| {
        ApiError::invalid(field, "is not a cursor returned by this api: pass the next_cursor of the previous page")
    })
}

fn db_error(what: &str, err: sqlx::Error) -> ApiError {
    let err = runcast_runtime::postgres::error(format!("cannot {what}"), err);
    match err.kind() {
        runcast_runtime::ErrorKind::Unavailable => ApiError::unavailable(format!(
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

    /// Every event of `stream` at or below this offset is reflected in the read model. Read before
    /// the rows, so the rows are at least that fresh.
    pub async fn as_of_offset(&self, stream: StreamKind) -> Result<u64, ApiError> {
        let offset: Option<i64> = sqlx::query_scalar("SELECT applied_offset FROM applied_offsets WHERE stream = $1")
            .bind(stream.base_name())
            .fetch_optional(&self.pool)
            .await
            .map_err(|err| db_error("read the applied offset", err))?;
        Ok(offset.map_or(0, |o| u64::try_from(o).unwrap_or(0)))
    }

    pub async fn list_executions(
        &self,
        tenant: &EntityId,
        filter: &ExecutionFilter,
    ) -> Result<Page<Execution>, ApiError> {
        let cursor = decode_cursor("page_token", &filter.cursor)?;
        let as_of_offset = self.as_of_offset(StreamKind::Executions).await?;
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.wire_name()).collect();
        let limit = i64::from(filter.page_size);
        let rows = sqlx::query(
            "SELECT state, last_offset, created_at, execution_id FROM executions
             WHERE tenant_id = $1
               AND ($2::text IS NULL OR workflow_id = $2)
               AND (cardinality($3::text[]) = 0 OR status = ANY($3))
               AND ($4::timestamptz IS NULL OR (created_at, execution_id) < ($4, $5))
             ORDER BY created_at DESC, execution_id DESC
             LIMIT $6",
        )
        .bind(tenant.as_str())
        .bind(filter.workflow_id.as_ref().map(EntityId::as_str))
        .bind(&statuses)
        .bind(cursor.as_ref().map(|c| c.at))
        .bind(cursor.as_ref().map(|c| c.id.as_str()))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| db_error("list executions", err))?;
        paginate(&rows, limit, as_of_offset, |row| {
            let created_at: DateTime<Utc> =
                row.try_get("created_at").map_err(|err| db_error("read an execution", err))?;
            let id: String = row.try_get("execution_id").map_err(|err| db_error("read an execution", err))?;
            let bytes: Vec<u8> = row.try_get("state").map_err(|err| db_error("read an execution", err))?;
            let last_offset: i64 = row.try_get("last_offset").map_err(|err| db_error("read an execution", err))?;
            let mut execution = Execution::decode(bytes.as_slice()).map_err(|err| {
                ApiError::internal(format!("the stored state of execution {id} does not decode: {err}"))
            })?;
            execution.offset = u64::try_from(last_offset).unwrap_or(0);
            Ok((execution, Cursor { at: created_at, id }))
        })
    }

    pub async fn list_events(&self, tenant: &EntityId, filter: &EventFilter) -> Result<Page<Event>, ApiError> {
        let cursor = decode_cursor("page_token", &filter.cursor)?;
        let types: Vec<&str> = filter.types.iter().map(|t| t.wire_name()).collect();
        let limit = i64::from(filter.page_size);
        let rows = sqlx::query(
            "SELECT body, stream_offset, occurred_at, event_id::text AS id FROM events
             WHERE tenant_id = $1
               AND ($2::text IS NULL OR execution_id = $2)
               AND ($3::text IS NULL OR workflow_id = $3)
               AND (cardinality($4::text[]) = 0 OR event_type = ANY($4))
               AND ($5::timestamptz IS NULL OR occurred_at >= $5)
               AND ($6::timestamptz IS NULL OR occurred_at < $6)
               AND ($7::timestamptz IS NULL OR (occurred_at, event_id) > ($7, $8::uuid))
             ORDER BY occurred_at, event_id
             LIMIT $9",
        )
        .bind(tenant.as_str())
        .bind(filter.execution_id.as_ref().map(EntityId::as_str))
        .bind(filter.workflow_id.as_ref().map(EntityId::as_str))
        .bind(&types)
        .bind(filter.since)
        .bind(filter.until)
        .bind(cursor.as_ref().map(|c| c.at))
        .bind(cursor.as_ref().map(|c| c.id.as_str()))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| db_error("list events", err))?;
        paginate(&rows, limit, 0, |row| {
            let body: Vec<u8> = row.try_get("body").map_err(|err| db_error("read an event", err))?;
            let offset: i64 = row.try_get("stream_offset").map_err(|err| db_error("read an event", err))?;
            let at: DateTime<Utc> = row.try_get("occurred_at").map_err(|err| db_error("read an event", err))?;
            let id: String = row.try_get("id").map_err(|err| db_error("read an event", err))?;
            let mut event = Event::decode(body.as_slice())
                .map_err(|err| ApiError::internal(format!("stored event {id} does not decode: {err}")))?;
            event.offset = u64::try_from(offset).unwrap_or(0);
            Ok((event, Cursor { at, id }))
        })
    }

    pub async fn list_agents(
        &self,
        tenant: &EntityId,
        statuses: &[AgentStatus],
        page_size: u32,
        cursor: &str,
    ) -> Result<Page<Agent>, ApiError> {
        let after = decode_cursor("page_token", cursor)?;
        let as_of_offset = self.as_of_offset(StreamKind::Agents).await?;
        let statuses: Vec<&str> = statuses.iter().map(|s| s.wire_name()).collect();
        let limit = i64::from(page_size);
        let rows = sqlx::query(
            "SELECT state, last_offset, agent_id FROM agents
             WHERE tenant_id = $1
               AND (cardinality($2::text[]) = 0 OR status = ANY($2))
               AND ($3::text IS NULL OR agent_id > $3)
             ORDER BY agent_id
             LIMIT $4",
        )
        .bind(tenant.as_str())
        .bind(&statuses)
        .bind(after.as_ref().map(|c| c.id.as_str()))
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|err| db_error("list agents", err))?;
        paginate(&rows, limit, as_of_offset, |row| {
            let bytes: Vec<u8> = row.try_get("state").map_err(|err| db_error("read an agent", err))?;
            let last_offset: i64 = row.try_get("last_offset").map_err(|err| db_error("read an agent", err))?;
            let id: String = row.try_get("agent_id").map_err(|err| db_error("read an agent", err))?;
            let mut agent = Agent::decode(bytes.as_slice())
                .map_err(|err| ApiError::internal(format!("the stored state of agent {id} does not decode: {err}")))?;
            agent.offset = u64::try_from(last_offset).unwrap_or(0);
            // Agents are sorted by id alone; the time in their cursor is unused.
            Ok((agent, Cursor { at: DateTime::<Utc>::UNIX_EPOCH, id }))
        })
    }
}

/// Turns the `limit + 1` rows a list query fetched into a page: the extra row only tells that
/// another page exists, and the cursor is the sort key of the last row shown.
fn paginate<T>(
    rows: &[sqlx::postgres::PgRow],
    limit: i64,
    as_of_offset: u64,
    decode: impl Fn(&sqlx::postgres::PgRow) -> Result<(T, Cursor), ApiError>,
) -> Result<Page<T>, ApiError> {
    let shown = usize::try_from(limit).unwrap_or(0);
    let mut items = Vec::with_capacity(rows.len().min(shown));
    let mut last = None;
    for row in rows.iter().take(shown) {
        let (item, key) = decode(row)?;
        items.push(item);
        last = Some(key);
    }
    let next_cursor = match last {
        Some(key) if rows.len() > shown => encode_cursor(key.at, &key.id),
        _ => String::new(),
    };
    Ok(Page { items, next_cursor, as_of_offset })
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
