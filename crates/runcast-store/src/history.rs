//! Reads of the history (`events`, `log_lines`): pages by stream offset for resumes and rebuilds,
//! the api's filtered pages by time, and where an execution's logs left off.

use crate::cursor::{Cursor, Page, paginate};
use crate::error::{Error, ErrorKind, is_undefined_table};
use chrono::{DateTime, Utc};
use prost::Message as _;
use runcast_contract::v1::{Event, EventType};
use runcast_contract::{EntityId, StreamKind, WireEnum};
use sqlx::PgPool;

/// Whether the history of `stream` goes back to `since + 1`, so a resume after `since` can be
/// served from it. No schema yet (no persister has run): the history is empty, `false`.
pub async fn reaches(pool: &PgPool, stream: StreamKind, since: u64) -> Result<bool, Error> {
    let oldest =
        match sqlx::query_scalar!("SELECT min(stream_offset) FROM events WHERE stream = $1", stream.base_name())
            .fetch_one(pool)
            .await
        {
            Ok(oldest) => oldest,
            Err(err) if is_undefined_table(&err) => None,
            Err(err) => return Err(Error::database("cannot read the history", err)),
        };
    Ok(oldest.is_some_and(|oldest| u64::try_from(oldest).is_ok_and(|oldest| oldest <= since.saturating_add(1))))
}

/// Which of a tenant's events a replay wants: each `Some` narrows to one entity.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntityFilter<'a> {
    pub execution_id: Option<&'a str>,
    pub agent_id: Option<&'a str>,
    pub workflow_id: Option<&'a str>,
}

/// One stored event: its offset in its stream and its protobuf bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: u64,
    pub body: Vec<u8>,
}

/// Up to `limit` events of the tenant on `stream` with `after < offset < before`, in offset
/// order. A page shorter than `limit` is the last one.
pub async fn page_by_offset(
    pool: &PgPool,
    stream: StreamKind,
    tenant: &EntityId,
    filter: EntityFilter<'_>,
    after: u64,
    before: u64,
    limit: usize,
) -> Result<Vec<Stored>, Error> {
    let rows = sqlx::query!(
        "SELECT stream_offset, body FROM events
         WHERE stream = $1 AND tenant_id = $2 AND stream_offset > $3 AND stream_offset < $4
           AND ($5::text IS NULL OR execution_id = $5) AND ($6::text IS NULL OR agent_id = $6)
           AND ($7::text IS NULL OR workflow_id = $7)
         ORDER BY stream_offset LIMIT $8",
        stream.base_name(),
        tenant.as_str(),
        i64::try_from(after).unwrap_or(i64::MAX),
        i64::try_from(before).unwrap_or(i64::MAX),
        filter.execution_id,
        filter.agent_id,
        filter.workflow_id,
        i64::try_from(limit).unwrap_or(i64::MAX),
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot read the history", err))?;
    Ok(rows
        .into_iter()
        .map(|row| Stored { offset: u64::try_from(row.stream_offset).unwrap_or(0), body: row.body })
        .collect())
}

/// A history row with the stream it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEvent {
    pub stream: String,
    pub offset: i64,
    pub body: Vec<u8>,
}

/// Up to `limit` events of every stream and tenant after `after` (stream name, offset), in
/// (stream, offset) order: what a rebuild pages through. Start from `("", 0)`.
pub async fn page_all(pool: &PgPool, after: (&str, i64), limit: i64) -> Result<Vec<StreamEvent>, Error> {
    sqlx::query_as!(
        StreamEvent,
        r#"SELECT stream, stream_offset AS "offset", body FROM events
           WHERE (stream, stream_offset) > ($1, $2)
           ORDER BY stream, stream_offset LIMIT $3"#,
        after.0,
        after.1,
        limit,
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot read the history", err))
}

/// Which of a tenant's events the api lists.
#[derive(Debug, Clone, Default)]
pub struct EventQuery<'a> {
    pub execution_id: Option<&'a EntityId>,
    pub workflow_id: Option<&'a EntityId>,
    /// Any of these (all when empty).
    pub types: &'a [EventType],
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub page_size: u32,
    /// The (time, event id) of the last event of the previous page.
    pub after: Option<(DateTime<Utc>, uuid::Uuid)>,
}

/// A page of the tenant's history in time order. `as_of_offset` is the EXECUTIONS stream's
/// watermark: every execution event at or below it is in the history.
pub async fn list_events(pool: &PgPool, tenant: &EntityId, query: &EventQuery<'_>) -> Result<Page<Event>, Error> {
    let as_of_offset = crate::read_model::as_of_offset(pool, StreamKind::Executions).await?;
    let types: Vec<String> = query.types.iter().map(|t| t.wire_name().to_owned()).collect();
    let rows = sqlx::query!(
        r#"SELECT body, stream_offset, occurred_at, event_id::text AS "id!" FROM events
           WHERE tenant_id = $1
             AND ($2::text IS NULL OR execution_id = $2)
             AND ($3::text IS NULL OR workflow_id = $3)
             AND (cardinality($4::text[]) = 0 OR event_type = ANY($4))
             AND ($5::timestamptz IS NULL OR occurred_at >= $5)
             AND ($6::timestamptz IS NULL OR occurred_at < $6)
             AND ($7::timestamptz IS NULL OR (occurred_at, event_id) > ($7, $8))
           ORDER BY occurred_at, event_id
           LIMIT $9"#,
        tenant.as_str(),
        query.execution_id.map(EntityId::as_str),
        query.workflow_id.map(EntityId::as_str),
        &types,
        query.since,
        query.until,
        query.after.map(|(at, _)| at),
        query.after.map(|(_, id)| id),
        i64::from(query.page_size) + 1,
    )
    .fetch_all(pool)
    .await
    .map_err(|err| Error::database("cannot list events", err))?;
    paginate(rows, query.page_size, as_of_offset, |row| {
        let mut event = Event::decode(row.body.as_slice())
            .map_err(|err| Error::new(ErrorKind::Corrupt, format!("stored event {} does not decode: {err}", row.id)))?;
        event.offset = u64::try_from(row.stream_offset).unwrap_or(0);
        Ok((event, Cursor::new(row.occurred_at, row.id)))
    })
}

/// Where an execution's log numbering continues once the stream has aged its log events out: the
/// last line number and log-event version the history holds (both 0 when it holds none, or when
/// there is no schema yet).
pub async fn log_position(pool: &PgPool, tenant: &EntityId, execution_id: &EntityId) -> Result<(u64, u64), Error> {
    let row = sqlx::query!(
        r#"SELECT COALESCE((SELECT max(line_number) FROM log_lines WHERE tenant_id = $1 AND execution_id = $2), 0)
                      AS "line!",
                  COALESCE((SELECT max(version) FROM events
                            WHERE stream = $3 AND tenant_id = $1 AND execution_id = $2), 0) AS "version!""#,
        tenant.as_str(),
        execution_id.as_str(),
        StreamKind::Logs.base_name(),
    )
    .fetch_one(pool)
    .await;
    match row {
        Ok(row) => Ok((u64::try_from(row.line).unwrap_or(0), u64::try_from(row.version).unwrap_or(0))),
        Err(err) if is_undefined_table(&err) => Ok((0, 0)),
        Err(err) => Err(Error::database("cannot read the log position from the history", err)),
    }
}
